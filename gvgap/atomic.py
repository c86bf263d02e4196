"""Atomic writes: the one way gvgap puts a file or a directory in place.

The content goes to a hidden temporary sibling of the target (same directory, so the same
file system), which :func:`os.replace` then moves over it: a reader — a resumed sweep, the
report, another process — sees the old content or the new, never a partial one. Whatever
fails (a full disk, a kill signal raised as an exception, a bad value), the temporary is
removed and the target is left as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """``.<name>.<8 hex>.tmp`` beside ``path`` (hidden; unique per call)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], object]) -> None:
    """Put ``data`` at ``path`` atomically (module docstring).

    Args:
        path: the target file (its directory must exist).
        data: bytes, text (written as UTF-8), or a writer ``data(tmp)`` that writes the
            temporary file itself (``DataFrame.to_parquet``, ``Figure.savefig`` with an
            explicit ``format``).

    Raises:
        OSError: the write or the replace failed (the caller names the file to the user).
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_dir(path: str | os.PathLike, fill: Callable[[Path], object]) -> None:
    """Replace the directory ``path`` by one that ``fill(tmp)`` writes into a fresh hidden
    sibling ``.<name>.tmp`` (a stale one of a killed run is cleared first): the old
    directory is removed only once the new one is complete, then the new one is renamed into
    place. A reader that must tell a complete directory from a half-renamed one seals it in
    ``fill`` (e.g. :func:`gvgap.llm.train.seal`: a hash list written last)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
