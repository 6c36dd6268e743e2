"""zoo._files: the one way medzoo writes a file (whole or not at all)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from zoo._files import write_atomically, write_bytes_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    def half(p):
        p.write_text("half of a new fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_the_file_gets_the_umasks_mode_not_a_temporary_files(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_bytes_atomically(tmp_path / "sub" / "labels.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "{}"


def test_concurrent_writers_each_write_a_whole_file(tmp_path):
    target = tmp_path / "model.safetensors"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=write_bytes_atomically, args=(target, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
