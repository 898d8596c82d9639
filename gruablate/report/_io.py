"""Atomic file writes for the report (a killed report never leaves half a file)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def write_text(path: Path, text: str) -> Path:
    """UTF-8 text version of :func:`write_bytes`."""
    return write_bytes(path, text.encode("utf-8"))
