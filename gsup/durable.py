"""Putting what was written on the disk: a file's bytes, or a folder's entries (a
rename or a new file in it)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path | str) -> int:
    """fsync a file or a folder by its path; the file's size."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)
