"""Files written whole or not at all: through a hidden temporary sibling renamed into place.

A reader never sees half a file, a failed or interrupted write leaves nothing behind, and the
file gets the permissions of any new file (the umask's), not a temporary file's 0600.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically", "write_bytes_atomically"]


def write_atomically(path: str | Path, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Write ``path`` through ``write(temporary path)``, then rename it into place.

    Args:
        path: the file to write (its folder is made if missing).
        write: writes the whole file at the path it is given.
        suffix: ends the temporary name (a writer that reads the format from it: ``.nii.gz``).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part{suffix}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # unique, with the umask's mode
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomically(path: str | Path, data: bytes | str) -> Path:
    """``data`` (text as UTF-8) as the whole of ``path``, atomically."""
    raw = data.encode() if isinstance(data, str) else data
    return write_atomically(path, lambda p: p.write_bytes(raw))
