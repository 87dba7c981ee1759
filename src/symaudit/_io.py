"""Atomic file writes: a file appears under its final name whole, or not at all.

Everything symaudit writes (datasets, checkpoints, results, reports) goes through
`atomic_path`: write to a temporary name in the same directory (same filesystem, so the
rename is atomic), fsync, then `os.replace`. A kill at any moment leaves the previous file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "load_result_payload",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit move it to ``path``.

    The caller writes the temporary file completely (any library, any mode). On an exception
    the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` ``obj`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Indented, key-sorted JSON with a trailing newline."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_result_payload(
    path: str | os.PathLike, fmt: str, error: type[Exception], what: str
) -> tuple[dict, dict]:
    """Read a result written as ``{"meta": json, ...tensors}`` with `torch.save`.

    Loads with ``weights_only=True`` (no code runs from the file) and returns
    ``(payload, meta)``. A missing file, a foreign format or anything unreadable raises
    ``error`` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"no {what} at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
    except Exception as exc:  # unpickling, zip, JSON and key errors all mean a bad file
        raise error(f"{path} is not a readable {what}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise error(f"{path}: unknown format {found!r} (expected {fmt!r})")
    return payload, meta
