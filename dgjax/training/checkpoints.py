"""Checkpoints of a training run: the run's config.json, resuming checks, and the orbax checkpoints
themselves (``Checkpoints``, in ``dgjax.models.checkpoints`` so that ``dg.load_model(RUN)`` reads a run
without importing training)."""

from __future__ import annotations

import json

from .._io import atomic_write, write_text
from ..errors import InvalidArgument
from ..models import ArchitectureMismatch
from ..models.checkpoints import Checkpoints, load_run, read_run_config, state_checksum  # noqa: F401 (re-exported)
from .config import _RESUME_FREE, TrainConfig


def _write_json(path: str, obj) -> None:
    atomic_write(path, write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n"))


def _read_run_config(run_dir: str) -> TrainConfig:
    d = read_run_config(run_dir)
    return TrainConfig.from_dict(d["train"] if "train" in d else d)


def _check_resume_config(old: TrainConfig, new: TrainConfig, run_dir: str) -> None:
    o, n = old.to_dict(), new.to_dict()
    if any(o[k] != n[k] for k in ("arch", "arch_kwargs", "data", "patch_size")):
        raise ArchitectureMismatch(
            f"cannot resume {run_dir!r}: its checkpoints were written by a different architecture or data set "
            f"(stored arch={o['arch']!r} {o['arch_kwargs']} on {o['data']!r}, requested arch={n['arch']!r} "
            f"{n['arch_kwargs']} on {n['data']!r}). Use another --out directory for a new run.")
    diff = {k: (o[k], n[k]) for k in o if k not in _RESUME_FREE and o[k] != n[k]}
    if diff:
        raise InvalidArgument(f"cannot resume {run_dir!r} with different settings (stored vs requested): {diff}; "
                              f"a resumed run must repeat the original settings to continue it exactly")

