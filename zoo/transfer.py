"""One bounded transfer: its limits, its failures, and the watch that enforces them.

Shared by the Hub client's downloads (``zoo.hub``) and the upstream ones (``zoo.download``): a
byte bound, a stall timeout and a deadline per file, and one error class per way a transfer
fails. Below both, so neither imports the other.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "WeightsUnavailableError",
    "DownloadError",
    "HubError",
    "DownloadLimits",
    "limits_for",
    "is_offline",
    "cache_dir",
    "open_url",
]

_CHUNK = 1 << 20
_MIB = 1 << 20


class WeightsUnavailableError(RuntimeError):
    """No source could provide the weights (offline and not cached, or every source failed)."""


class DownloadError(WeightsUnavailableError):
    """An upstream transfer failed: unreachable, HTTP error, too large, stalled, past its deadline,
    truncated, or a web page instead of a checkpoint."""


class HubError(WeightsUnavailableError):
    """The Hugging Face Hub could not provide a file; ``kind`` is ``offline``, ``unreachable``,
    ``not-found``, ``unauthorised``, ``too-large`` or ``http``; for ``not-found``, ``missing`` may
    say what the Hub does not have (``repository`` or ``revision``)."""

    def __init__(self, kind: str, message: str, missing: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.missing = missing


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``MEDZOO_OFFLINE``) set: use caches only."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("MEDZOO_OFFLINE"))


def cache_dir() -> Path:
    """Root of medzoo's own cache (converted upstream checkpoints, the Hub configs it fetched).

    ``$MEDZOO_CACHE``, else ``$XDG_CACHE_HOME/medzoo``, else ``~/.cache/medzoo`` (the XDG default).
    """
    if os.environ.get("MEDZOO_CACHE"):
        return Path(os.environ["MEDZOO_CACHE"])
    # XDG says a relative XDG_CACHE_HOME is invalid and must be ignored.
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "medzoo"


@dataclass(frozen=True)
class DownloadLimits:
    """Bounds of one transfer: at most ``max_bytes``, no pause over ``stall_s``, done by ``deadline_s``."""

    max_bytes: int
    stall_s: float
    deadline_s: float


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name} must be a positive number, got {raw!r}")
    return value


def limits_for(bound: int, fixed: bool = False) -> DownloadLimits:
    """The limits of a download expected to bring at most ``bound`` bytes (environment applied).

    Args:
        bound: the size bound in bytes.
        fixed: keep ``bound`` even when ``MEDZOO_DOWNLOAD_MAX_BYTES`` is set (for a file whose
            size is a property of its format, such as a config, not of a model).

    Returns:
        ``MEDZOO_DOWNLOAD_MAX_BYTES`` or ``bound``; ``MEDZOO_DOWNLOAD_STALL_TIMEOUT`` or 60 s;
        ``MEDZOO_DOWNLOAD_DEADLINE`` or 60 s + bound / (1 MiB/s): a file that arrives more slowly
        than a slow home line is being dripped, and a wait of an hour reads as a hang.
    """
    max_bytes = bound if fixed else int(_env_number("MEDZOO_DOWNLOAD_MAX_BYTES", float(bound)))
    stall = _env_number("MEDZOO_DOWNLOAD_STALL_TIMEOUT", 60.0)
    deadline = _env_number("MEDZOO_DOWNLOAD_DEADLINE", round(60.0 + max_bytes / _MIB))
    return DownloadLimits(max_bytes=max_bytes, stall_s=stall, deadline_s=deadline)


class _Transfer:
    """Counts the bytes and the time of one transfer; raises :class:`DownloadError` past a bound."""

    def __init__(self, what: str, limits: DownloadLimits, error: type[WeightsUnavailableError]) -> None:
        self.what, self.limits, self.error = what, limits, error
        self.start = time.monotonic()
        self.received = 0
        self.pages = 0  # bytes of web pages read on the way to the file (they count too)

    def _fail(self, message: str) -> WeightsUnavailableError:
        if self.error is HubError:
            return HubError("too-large" if "bound" in message else "unreachable", message)
        return self.error(message)

    def announce(self, total: int | None) -> None:
        if total is not None and self.pages + total > self.limits.max_bytes:
            raise self._fail(
                f"{self.what}: the server announces {total:,} bytes, over the {self.limits.max_bytes:,}-byte "
                "bound for this file; refused (MEDZOO_DOWNLOAD_MAX_BYTES raises the bound if the file "
                "really grew)"
            )

    def seen(self, total_received: int) -> None:
        self.received = total_received
        if self.received > self.limits.max_bytes:
            raise self._fail(
                f"{self.what}: more than {self.limits.max_bytes:,} bytes received, over the bound for this "
                "file; aborted (MEDZOO_DOWNLOAD_MAX_BYTES raises the bound if the file really grew)"
            )
        self.check_deadline()

    def check_deadline(self) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed > self.limits.deadline_s:
            raise self.deadline_error()

    def deadline_error(self) -> WeightsUnavailableError:
        return self._fail(
            f"{self.what}: not complete after {self.limits.deadline_s:g} s ({self.received:,} bytes "
            "received); aborted (MEDZOO_DOWNLOAD_DEADLINE sets the deadline)"
        )

    def stall_error(self) -> WeightsUnavailableError:
        return self._fail(
            f"{self.what}: no byte from the server for {self.limits.stall_s:g} s ({self.received:,} bytes "
            "received); aborted (MEDZOO_DOWNLOAD_STALL_TIMEOUT sets the timeout)"
        )


# ------------------------------------------------------------------- HTTP requests


class _BoundedRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects followed without reading their bodies, and without the token on another host.

    urllib reads a redirect's whole body before it follows it: a body without end would be read
    within the stall timeout but past any bound or deadline. The response is closed instead (a
    closed response reads as empty). The ``Authorization`` header is meant for the host it was
    sent to; a redirect elsewhere (a CDN, a hostile mirror) goes without it.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            fp.close()
            if urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
                new.remove_header("Authorization")
        return new


def open_url(url: str, headers: dict[str, str], timeout: float) -> Any:
    """``urlopen`` of a ``GET`` with :class:`_BoundedRedirects`; ``timeout`` bounds each socket wait."""
    opener = urllib.request.build_opener(_BoundedRedirects)
    return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)


# ------------------------------------------------------------------- web pages

# A web page a download meets (a confirmation form, a folder listing, an error page) is kilobytes:
# any page is read at most this far, and its bytes count against the transfer's bound and deadline.
MAX_PAGE_BYTES = 1 << 20


def read_page(read: Any, transfer: _Transfer, where: str) -> bytes:
    """The body of a web page, read through ``read(n)`` by chunks within ``MAX_PAGE_BYTES`` and
    ``transfer``'s bounds; a longer body is refused as a web page, never read whole."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = read(64 * 1024)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        transfer.pages += len(chunk)
        transfer.seen(transfer.received + len(chunk))
        if size > MAX_PAGE_BYTES:
            raise DownloadError(
                f"{where}: the server returned a web page longer than {MAX_PAGE_BYTES:,} bytes, not a "
                "checkpoint; aborted"
            )
        parts.append(chunk)


def _page_error(what: str, url: str, excerpt: str) -> DownloadError:
    return DownloadError(f"{what} from {url}: the server returned a web page, not a checkpoint: {excerpt}")


# ---------------------------------------------------------------------------- Hub


# ------------------------------------------------------------------- network failures

_DNS_TEXT = (
    "name or service not known",
    "temporary failure in name resolution",
    "nodename nor servname",
    "getaddrinfo failed",
    "no address associated with hostname",
    "failed to resolve",
    "nameresolutionerror",
)


def _chain(e: BaseException) -> list[BaseException]:
    """``e``, its causes and contexts, and the exceptions HTTP libraries keep as attributes or args."""
    seen: list[BaseException] = []
    todo = [e]
    while todo and len(seen) < 32:
        x = todo.pop(0)
        if x is None or any(x is s for s in seen):
            continue
        seen.append(x)
        todo += [x.__cause__, x.__context__, getattr(x, "reason", None)]  # type: ignore[list-item]
        todo += [a for a in getattr(x, "args", ()) if isinstance(a, BaseException)]
    return [x for x in seen if isinstance(x, BaseException)]


def network_failure(e: BaseException, timeout_s: float) -> str:
    """The kind of a network failure, in words, named once: "no name resolution for the host",
    "connection refused", "timed out after N s", or "connection failed (TYPE)"."""
    import socket

    chain = _chain(e)
    text = " ".join(f"{type(x).__name__} {x}" for x in chain).lower()
    if any(isinstance(x, socket.gaierror) for x in chain) or any(t in text for t in _DNS_TEXT):
        return "no name resolution for the host"
    if any(isinstance(x, ConnectionRefusedError) for x in chain) or "connection refused" in text:
        return "connection refused"
    if any(isinstance(x, TimeoutError) or "timeout" in type(x).__name__.lower() for x in chain):
        return f"timed out after {timeout_s:g} s"
    return f"connection failed ({type(chain[-1] if len(chain) > 1 else e).__name__})"
