"""Models published with ``zoo publish``, loaded back by their Hub id: ``hf-hub:ORG/NAME[@REVISION]``.

A medzoo repository holds ``config.json`` (model name, model arguments, preprocessing, labels,
the provenance and licence of the weights it started from) and ``model.safetensors``. The
config is fetched first, so a repository that is not a medzoo one is refused before any
weights are downloaded; the weights are then fetched at the commit the config came from, so
a push between the two downloads cannot pair one commit's config with another's weights.
Both go through ``huggingface_hub`` (its cache, ``HF_ENDPOINT``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``), announced as ``library_name="medzoo"`` so the Hub counts the downloads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.hub import DownloadLimits

__all__ = ["HUB_PREFIX", "is_hub_id", "parse_hub_id", "fetch_config", "fetch_weights"]

HUB_PREFIX = "hf-hub:"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def _fetch(repo_id: str, filename: str, revision: str | None, what: str, limits: DownloadLimits) -> Path:
    """One file of the repository through :func:`zoo.hub._hub_download` (its byte bound, stall
    timeout, deadline and failure kinds), with the messages of a ``hf-hub:`` id."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from zoo._version import __version__
    from zoo.hub import HubError, WeightsUnavailableError, _hub_download

    at = f"@{revision}" if revision else ""
    try:
        return _hub_download(
            repo_id,
            filename,
            revision,
            limits,
            refetch="load it once while online",
            where=f"hf-hub:{repo_id}{at} {filename}",
            library_name="medzoo",
            library_version=__version__,
        )
    except HubError as e:
        cause = e.__cause__
        # The Hub answers 401 for a repository that does not exist as well as for a private one.
        if isinstance(cause, RepositoryNotFoundError) and not isinstance(cause, GatedRepoError):
            raise WeightsUnavailableError(
                f"hf-hub:{repo_id}: no such repository on the Hub (or no access)"
            ) from e
        if isinstance(cause, RevisionNotFoundError):
            raise WeightsUnavailableError(
                f"hf-hub:{repo_id}: the repository has no revision {revision!r}"
            ) from e
        if e.kind == "not-found":  # the repository and revision exist: the file does not
            raise ValueError(
                f"hf-hub:{repo_id}{at} is not a medzoo repository: it has no {filename} ({what}); "
                "a medzoo repository holds config.json and model.safetensors, as `zoo publish` writes them"
            ) from e
        raise


def _commit_of(path: Path, filename: str) -> str:
    """The commit a cached Hub file belongs to: its snapshot folder is named after it."""
    return path.parents[len(Path(filename).parts) - 1].name


def fetch_config(hub_id: str) -> tuple[str, str | None, str, Path]:
    """``(repo_id, revision, commit, config file)`` of a Hub id: ``config.json`` only (bounded), no weights.

    The file is read and checked by :func:`zoo.runconfig.read_config`; this module only fetches.
    """
    from zoo.hub import limits_for
    from zoo.runconfig import MAX_CONFIG_BYTES

    repo_id, revision = parse_hub_id(hub_id)
    limits = limits_for(MAX_CONFIG_BYTES, fixed=True)
    path = _fetch(repo_id, "config.json", revision, "model name, arguments and preprocessing", limits)
    return repo_id, revision, _commit_of(path, "config.json"), path


def fetch_weights(repo_id: str, commit: str, max_bytes: int) -> Path:
    """``model.safetensors`` of a medzoo repository at ``commit`` (the one its config came from),
    at most ``max_bytes`` (the caller's bound from the model the config describes)."""
    from zoo.hub import limits_for

    return _fetch(repo_id, "model.safetensors", commit, "the weights", limits_for(max_bytes))
