"""Upstream transfers: a checkpoint from its authors' URL, over HTTP or from Google Drive.

:func:`fetch_upstream` is what :mod:`zoo.hub` calls for a weights tag that is not on the Hub
(or whose Hub file is gone); the digest check, the conversion and the cache stay there.

- ``MEDZOO_UPSTREAM_ENDPOINT`` replaces the scheme and host of upstream URLs (a mirror),
  Google Drive's hosts included.
- Google Drive files go through ``gdown``: a file URL (``drive.google.com/uc?id=…``) past Drive's
  virus-scan confirmation page, or ``drive.google.com/drive/folders/<id>#<file name>[,<other
  name>]`` for a file picked by name from a shared folder. gdown's sessions are routed through
  the mirror by one seam (:func:`_install_drive_seam`); its cookie file is never read or written.
- Every transfer keeps :mod:`zoo.hub`'s invariants: the :class:`zoo.hub.DownloadLimits` of the
  file (byte bound, stall timeout, deadline), one :class:`zoo.hub.DownloadError` line per
  failure, and a web page reported as such, never written as a checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any

from zoo.transfer import (
    _CHUNK,
    DownloadError,
    DownloadLimits,
    _page_error,
    _Transfer,
    network_failure,
    open_url,
    read_page,
)

log = logging.getLogger("zoo.hub")

__all__ = ["fetch_upstream", "upstream_url", "is_drive_url"]

_DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")


def fetch_upstream(url: str, dest: Path, limits: DownloadLimits, progress: bool, what: str) -> str:
    """Download the upstream file ``url`` (HTTP, or Google Drive through gdown) to ``dest``.

    Args:
        url: the registry's URL (the mirror of ``MEDZOO_UPSTREAM_ENDPOINT`` is applied here).
        dest: the file to write.
        limits: the transfer's bounds.
        progress: show a progress bar.
        what: ``name.tag`` for the messages.

    Returns:
        The URL the file came from (for messages about its content).

    Raises:
        DownloadError: unreachable, an HTTP error, a short read, a crossed bound, a web page.
    """
    if is_drive_url(url):
        log.info("downloading %s from Google Drive %s", what, url)
        _download_drive(url, dest, limits, progress, what)
        return url
    url = upstream_url(url)
    log.info("downloading %s from %s", what, url)
    _download(url, dest, limits, progress, what)
    return url


def upstream_url(url: str) -> str:
    """``url``, with scheme and host replaced by ``MEDZOO_UPSTREAM_ENDPOINT`` when set."""
    mirror = os.environ.get("MEDZOO_UPSTREAM_ENDPOINT")
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    base = mirror.rstrip("/")
    return base + parts.path + (f"?{parts.query}" if parts.query else "")


def is_drive_url(url: str) -> bool:
    """Whether ``url`` is a Google Drive file or folder link (fetched through gdown)."""
    return urllib.parse.urlsplit(url).hostname in _DRIVE_HOSTS


def _download(url: str, dest: Path, limits: DownloadLimits, progress: bool, what: str) -> Path:
    """Stream ``url`` to ``dest`` within ``limits``; a short read, a crossed bound or a web page fails."""
    transfer = _Transfer(f"{what} from {url}", limits, DownloadError)
    try:
        resp = open_url(url, {"User-Agent": "medzoo"}, limits.stall_s)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{what}: upstream {url} answered HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError | socket.timeout):
            raise transfer.stall_error() from e
        raise DownloadError(
            f"{what}: cannot reach upstream {url}: {network_failure(e, limits.stall_s)}"
        ) from e
    except TimeoutError as e:
        raise transfer.stall_error() from e
    except OSError as e:
        raise DownloadError(
            f"{what}: cannot reach upstream {url}: {network_failure(e, limits.stall_s)}"
        ) from e
    with resp, open(dest, "wb") as out:
        if (resp.headers.get("Content-Type") or "").lower().startswith("text/"):  # absent is not text
            raise _page_error(what, url, " ".join(resp.read1(4096).decode("utf-8", "replace").split())[:200])
        total = resp.headers.get("Content-Length")
        total = int(total) if total is not None and total.isdigit() else None
        transfer.announce(total)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], leave=False)
        try:
            while True:
                try:
                    chunk = resp.read1(_CHUNK)  # returns what has arrived: the deadline is checked per read
                except TimeoutError as e:
                    raise transfer.stall_error() from e
                except OSError as e:
                    raise DownloadError(f"{what}: connection to {url} failed: {e}") from e
                if not chunk:
                    break
                out.write(chunk)
                transfer.seen(transfer.received + len(chunk))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and transfer.received != total:
        raise DownloadError(
            f"{what}: truncated download from {url}: received {transfer.received} of {total} bytes"
        )
    return dest


# ------------------------------------------------------------------ Google Drive

_SEAM_LOCK = threading.Lock()
_LAST_PAGE = threading.local()


_MAX_REDIRECTS = 10


def _close_redirect(resp: Any, *args: Any, **kwargs: Any) -> Any:
    """A response hook: a redirect's body is closed unread (requests would read it whole, even
    when it does not follow it, to prepare the next request)."""
    if resp.is_redirect:
        resp.raw.close()
    return resp


def _follow(request: Any, method: str, url: str, args: tuple, kw: dict[str, Any]) -> Any:
    """``request`` with its redirects followed here, each hop to Drive's hosts through the mirror.

    requests reads a redirect's whole body before it follows it (to release the connection), bounded
    by nothing: a body without end would fill memory and never reach the deadline. Here a redirect
    is closed unread (:func:`_close_redirect`). Cookies stay with the session, as requests keeps them.
    """
    import requests

    follow = kw.pop("allow_redirects", True)
    for _ in range(_MAX_REDIRECTS + 1):
        host = urllib.parse.urlsplit(url).hostname
        resp = request(
            method, upstream_url(url) if host in _DRIVE_HOSTS else url, *args, allow_redirects=False, **kw
        )
        if not (follow and resp.is_redirect):
            return resp
        resp.close()
        url = urllib.parse.urljoin(url, resp.headers["location"])
        if resp.status_code in (301, 302, 303) and method != "HEAD":
            method = "GET"  # as browsers and requests do; a body is not sent again
            kw.pop("data", None)
            kw.pop("json", None)
    raise requests.exceptions.TooManyRedirects(f"more than {_MAX_REDIRECTS} redirects from {url}")


def _install_drive_seam() -> None:
    """Route gdown's requests to Drive's hosts through ``MEDZOO_UPSTREAM_ENDPOINT`` when it is set."""
    import importlib

    # The package re-exports functions under the module names: fetch the modules themselves.
    gd = importlib.import_module("gdown.download")
    gf = importlib.import_module("gdown.download_folder")
    with _SEAM_LOCK:
        if getattr(gd._get_session, "_medzoo_seam", False):
            return
        make_session = gd._get_session

        def _get_session(**kwargs: Any) -> Any:
            sess, cookies_file = make_session(**kwargs)
            request = sess.request

            def _request(method: str, url: str, *args: Any, **kw: Any) -> Any:
                streamed = kw.get("stream", False)
                kw["stream"] = True  # a body is read here, within bounds, never whole by requests
                resp = _follow(request, method, url, args, kw)
                transfer = getattr(_LAST_PAGE, "transfer", None)
                if transfer is not None and (not streamed or "Content-Disposition" not in resp.headers):
                    # gdown reads a body without Content-Disposition whole (res.text): a page.
                    with resp:
                        body = read_page(
                            lambda n: resp.raw.read1(n, decode_content=True), transfer, transfer.what
                        )
                    resp._content, resp._content_consumed = body, True
                    _LAST_PAGE.response = resp  # the page shown when gdown cannot use it
                return resp

            sess.request = _request
            sess.hooks["response"].append(_close_redirect)
            return sess, cookies_file

        _get_session._medzoo_seam = True  # type: ignore[attr-defined]
        # Seam: gdown hard-codes Drive's https hosts, and opens every session in this one function.
        gd._get_session = gf._get_session = _get_session


def _last_page_excerpt() -> str:
    resp = getattr(_LAST_PAGE, "response", None)
    text = resp.content.decode("utf-8", "replace") if resp is not None else ""
    return " ".join(text.split())[:200] or "(empty page)"


def _drive_file_id(url: str, dest_dir: Path, limits: DownloadLimits, what: str) -> str:
    """The Drive file id named by ``url``: its ``id``, or the folder entry named in its fragment."""
    import gdown
    import requests

    parts = urllib.parse.urlsplit(url)
    folder = re.match(r"^/drive/folders/([-\w]+)", parts.path)
    if folder is None:
        file_id, _ = gdown.parse_url.parse_url(url)
        if not file_id:
            raise ValueError(f"{what}: {url} names no Google Drive file id")
        return file_id
    names = [urllib.parse.unquote(n) for n in parts.fragment.split(",") if n]
    if not names:
        raise ValueError(f"{what}: Drive folder URL {url} must end with #<file name>")
    _LAST_PAGE.response = None
    try:
        listing = gdown.download_folder(
            id=folder.group(1),
            output=str(dest_dir) + os.sep,
            skip_download=True,
            quiet=True,
            use_cookies=False,
            timeout=(limits.stall_s, limits.stall_s),
        )
    except requests.exceptions.RequestException as e:
        kind = network_failure(e, limits.stall_s)
        raise DownloadError(f"{what}: cannot list Google Drive folder {folder.group(1)}: {kind}") from e
    except gdown.exceptions.DownloadError as e:
        first = str(e).splitlines()[0]
        raise DownloadError(f"{what}: Google Drive folder {folder.group(1)}: {first}") from e
    found = {PurePosixPath(f.path).name: f.id for f in listing}
    for name in names:
        if name in found:
            return found[name]
    raise DownloadError(
        f"{what}: Google Drive folder {folder.group(1)} has no file {' or '.join(names)} "
        f"(it holds: {', '.join(sorted(found)) or 'nothing'})"
    )


def _download_drive(url: str, dest: Path, limits: DownloadLimits, progress: bool, what: str) -> Path:
    """Download a Google Drive file (past the virus-scan page) with gdown, within ``limits``."""

    _install_drive_seam()
    # One transfer for the whole exchange: the pages (folder listing, confirmation) count too.
    transfer = _Transfer(f"{what} from {url}", limits, DownloadError)
    _LAST_PAGE.transfer = transfer
    try:
        file_id = _drive_file_id(url, dest.parent, limits, what)
        return _drive_file(file_id, url, dest, transfer, progress)
    finally:
        _LAST_PAGE.transfer = None


def _drive_file(file_id: str, url: str, dest: Path, transfer: _Transfer, progress: bool) -> Path:
    import gdown
    import requests

    limits, what = transfer.limits, transfer.what.split(" from ", 1)[0]
    cancel = threading.Event()
    timer = threading.Timer(max(0.0, limits.deadline_s - (time.monotonic() - transfer.start)), cancel.set)
    timer.daemon = True
    timer.start()

    def _progress(done: int, total: int | None) -> None:
        transfer.announce(total)
        transfer.seen(transfer.pages + done)

    _LAST_PAGE.response = None
    try:
        gdown.download(
            id=file_id,
            output=str(dest),
            quiet=not progress,
            use_cookies=False,  # never read or write ~/.cache/gdown/cookies.txt
            timeout=(limits.stall_s, limits.stall_s),
            progress=_progress,
            cancel=cancel,
        )
    except gdown.exceptions.DownloadCancelled as e:
        raise transfer.deadline_error() from e
    except gdown.exceptions.FileURLRetrievalError as e:
        raise _page_error(what, url, _last_page_excerpt()) from e
    except requests.exceptions.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        raise DownloadError(f"{what}: Google Drive answered HTTP {code} for {url}") from e
    except (requests.exceptions.Timeout, TimeoutError) as e:
        raise (transfer.deadline_error() if cancel.is_set() else transfer.stall_error()) from e
    except requests.exceptions.RequestException as e:
        raise DownloadError(
            f"{what}: cannot reach Google Drive for {url}: {network_failure(e, limits.stall_s)}"
        ) from e
    except gdown.exceptions.DownloadError as e:
        raise DownloadError(f"{what}: Google Drive download of {url} failed: {str(e).splitlines()[0]}") from e
    finally:
        timer.cancel()
    return dest
