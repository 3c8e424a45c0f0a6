"""File and pytree helpers shared by data, models and training (core layer)."""

from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np


def atomic_write(path: str, write: Callable[[str], None], error: type[Exception] = OSError) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which then replaces ``path``
    (a reader never sees a half-written file). A missing directory or a failed write raises ``error`` naming
    the path (the temporary file is removed)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise error(f"output path {path!r}: directory {directory!r} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise error(f"output path {path!r}: could not write ({e})") from e


def write_bytes_synced(data: bytes) -> Callable[[str], None]:
    """A ``write`` for ``atomic_write``: the bytes, flushed to disk (fsync) before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return write


def leaf_shapes(tree) -> dict:
    """``{keystr(path): shape}`` of every leaf of a pytree (arrays, ShapeDtypeStructs or array-likes)."""
    return {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_leaves_with_path(tree)}
