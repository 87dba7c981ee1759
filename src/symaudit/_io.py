"""Atomic file writes: a file appears under its final name whole, or not at all.

Everything symaudit writes (datasets, checkpoints, results, reports) goes through
`atomic_path`: write to a temporary name in the same directory (same filesystem, so the
rename is atomic), fsync, then `os.replace`. A kill at any moment leaves the previous file.
Whole result directories (an audit redone with other settings, a report) are built beside
their final name and swapped in by `staged_dir`, so an interrupted rewrite keeps the old
result. Files get the permissions the umask allows (not `mkstemp`'s 0600), and every write
error is a plain `OSError` naming the file (the CLI prints it as one line).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from symaudit.errors import BusyError

__all__ = [
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "exclusive",
    "file_sha256",
    "json_digest",
    "load_result_payload",
    "read_tagged_json",
    "payload_digest",
    "prepare_stage",
    "remove_stale_temporaries",
    "replace_dir",
    "staged_dir",
    "staging_path",
    "tensor_bytes",
    "tensor_digest",
    "tree_digests",
]


def _umask() -> int:
    # os.umask can only be read by setting it; restore at once (the CLI is single-threaded).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_bytes(path: Path, data: bytes) -> None:
    """The one place file contents are written (tests replace it to simulate a full disk)."""
    with open(path, "wb") as f:
        f.write(data)


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove the temporaries `atomic_path` leaves beside ``path`` when its writer is killed
    (``.<name>.<random>.tmp``); call it only while no other writer of ``path`` runs."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600: results must be shareable
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename not in (None, str(tmp)):
            raise
        # name the file the user asked for, not our temporary (a full disk says neither)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` ``obj`` to ``path`` atomically.

    Serialised in memory first: torch's own file writer reports a full disk as an opaque
    "unexpected pos" error, a plain write gives an `OSError` with its errno and file name.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        _write_bytes(tmp, buffer.getbuffer())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        _write_bytes(tmp, text.encode())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Indented, key-sorted JSON with a trailing newline."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_digest(data: Any) -> str:
    """SHA-256 (16 hex digits) of the canonical JSON of ``data`` (sorted keys; other objects by
    ``str``): the digest of settings, stored to tell a resumable output from another one."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype and shape, on any device), in memory order."""
    t = t.detach().cpu().contiguous().reshape(-1)  # reshape: 0-dim tensors cannot be viewed
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 (16 hex digits) of the bytes of ``tensors`` in turn."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(tensor_bytes(t))
    return h.hexdigest()[:16]


def payload_digest(obj: Any) -> str:
    """SHA-256 of a nested payload (dicts, lists, tensors, numbers, strings), independent of
    how it is serialised: stored in a file, it tells a loaded payload from a corrupted one."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(tensor_bytes(obj))
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, list | tuple):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file or directory being written) for the block.

    The lock is a hidden ``.NAME.lock`` beside it, removed on exit; the kernel releases it
    when the process dies, so a killed run never blocks the next one, while a second live
    writer gets `BusyError` at once instead of overwriting the first one's work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    f = _acquire(lock, path)
    try:
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)  # still holding the lock: no one else can own this inode
        f.close()


def _acquire(lock: Path, path: Path) -> Any:
    while True:
        f = open(lock, "a+")  # noqa: SIM115 (returned open: the lock lives as long as the file)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise BusyError(
                f"{path} is being written by another symaudit process (pid {holder}); "
                "wait for it to finish or stop it first"
            ) from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else its previous holder removed it after we opened it: try again
            f.seek(0)
            f.truncate()
            return f
        f.close()


def check_output_dir(path: str | os.PathLike) -> Path:
    """Fail early, naming the culprit, if ``path`` cannot become a directory: it, or the
    nearest existing folder above it, is a regular file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = (
                    "is a file, not a directory"
                    if p == path
                    else f"is a file, not a folder for {path}"
                )
                raise NotADirectoryError(errno.ENOTDIR, what, str(p))
            break
    return path


def _old_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); OSError if unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 unavailable")
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


def _recover(final: Path) -> None:
    """Undo a swap killed between its two renames (only without RENAME_EXCHANGE)."""
    old = _old_name(final)
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, final)


def replace_dir(new: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the directory ``new`` in place of ``final`` (if any) and delete the old contents.

    With RENAME_EXCHANGE the swap is one atomic step; otherwise ``final`` is renamed aside
    first and `_recover` restores it if the process dies before ``new`` takes its place.
    """
    new, final = Path(new), Path(final)
    if not final.exists():
        os.rename(new, final)
        return
    try:
        _exchange(new, final)
        shutil.rmtree(new)  # now holds the old result
    except OSError:
        old = _old_name(final)
        os.rename(final, old)
        os.rename(new, final)
        shutil.rmtree(old)


def staging_path(final: str | os.PathLike) -> Path:
    """Where a directory replacing ``final`` is built: ``FINAL.partial`` beside it."""
    final = Path(final)
    return final.with_name(final.name + ".partial")


def prepare_stage(final: str | os.PathLike, keep: bool = False) -> Path:
    """The directory ``FINAL.partial`` to build a replacement of ``final`` in, created empty
    (``keep=True``: with what an interrupted build left there, to resume it)."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(final))
    _recover(final)
    build = staging_path(final)
    if not keep and build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True, exist_ok=True)
    return build


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside ``final``; on normal exit it replaces ``final`` as a
    whole (`replace_dir`). An exception or a kill leaves ``final`` as it was."""
    build = prepare_stage(final)
    yield build
    replace_dir(build, final)


def tree_digests(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of a file, or of every file below a directory (relative name -> digest);
    hidden files (locks, temporaries) are skipped."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = {}
    for p in files:
        rel = p.relative_to(path).as_posix() if p != path else p.name
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        out[rel] = file_sha256(p)
    return out


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


def read_tagged_json(
    path: str | os.PathLike, fmt: str, error: type[Exception], what: str
) -> dict | None:
    """The JSON object in ``path`` whose ``"format"`` is ``fmt``; None if there is no file.
    Unreadable JSON or another format raises ``error`` naming the file and ``what`` it
    should have been."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{path}: unreadable {what}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path}: not a symaudit {what}")
    return data
