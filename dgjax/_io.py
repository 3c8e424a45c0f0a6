"""File and pytree helpers shared by data, models and training (core layer).

Every file dgjax writes goes through ``atomic_write`` or ``open_no_follow``: a temporary file is created
exclusively (``O_EXCL``) under an unpredictable name and never through a symbolic link (``O_NOFOLLOW``), so
links planted in an output directory cannot redirect a write onto another file (issue 24, item 9).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from typing import IO

import jax
import numpy as np

from .errors import InvalidArgument

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _create_exclusive(directory: str, prefix: str) -> tuple[int, str]:
    """A new empty file in ``directory`` under an unpredictable name, created with O_EXCL | O_NOFOLLOW (so
    neither an existing file nor a planted link is ever opened); returns ``(fd, path)``. Mode 0666 less
    the umask, as ``open`` would give."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # a name already taken (by chance or planted): draw another
            continue
    raise FileExistsError(f"could not create a temporary file in {directory!r} (100 names taken)")


def atomic_write(path: str, write: Callable[[IO[bytes]], object], error: type[Exception] = OSError) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file beside it (``fh`` a binary file
    object, flushed and fsync-ed afterwards), which then replaces ``path`` by a rename (a reader never
    sees a half-written file; a link at ``path`` is replaced, not followed). A missing directory or a
    failed write raises ``error`` naming the path (the temporary file is removed)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise error(f"output path {path!r}: directory {directory!r} does not exist")
    tmp = None
    try:
        fd, tmp = _create_exclusive(directory, f".{os.path.basename(path)}.tmp-")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.lexists(tmp):
            os.remove(tmp)
        raise error(f"output path {path!r}: could not write ({e})") from e


def write_bytes(data: bytes) -> Callable[[IO[bytes]], object]:
    """A ``write`` for ``atomic_write`` that writes ``data``."""
    return lambda fh: fh.write(data)


def write_text(text: str) -> Callable[[IO[bytes]], object]:
    """A ``write`` for ``atomic_write`` that writes ``text`` as UTF-8."""
    return write_bytes(text.encode())


def open_no_follow(path: str, mode: str = "a"):
    """``open(path, mode)`` for "a" (append, created if missing) that refuses a symbolic link or anything
    but a regular file at ``path`` (a planted link must not redirect the write)."""
    if mode != "a":
        raise InvalidArgument(f"open_no_follow: only mode 'a' is supported; got {mode!r}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
    except OSError as e:
        if os.path.islink(path):
            raise OSError(f"{path!r} is a symbolic link; dgjax never writes through a link (remove it)") from e
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path!r} is not a regular file")
    return os.fdopen(fd, "a")


def read_regular_file(path: str, max_bytes: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``max_bytes`` bytes (opened without
    blocking, so a FIFO or a device such as /dev/zero is refused instead of read forever). Raises
    ``FileNotFoundError`` if missing and ``OSError`` naming the problem otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path!r} is not a regular file")
        if st.st_size > max_bytes:
            raise OSError(f"{path!r} is {st.st_size} bytes, more than the {max_bytes} expected")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(f"{path!r} grew beyond {max_bytes} bytes while being read")
    return data


def leaf_shapes(tree) -> dict:
    """``{keystr(path): shape}`` of every leaf of a pytree (arrays, ShapeDtypeStructs or array-likes)."""
    return {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_leaves_with_path(tree)}
