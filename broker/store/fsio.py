"""Small durable-file helpers shared by the message store and the log topics."""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that names created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    tmp: Path | None = None,
    sync_dir: bool = True,
) -> None:
    """Write ``data`` to a temp file (``tmp``, default ``<path>.tmp``), fsync it, rename
    it over ``path`` and (unless ``sync_dir`` is False) fsync the directory."""
    tmp = tmp if tmp is not None else path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)
