"""Validation of a model config (``NAME.json``, a run's ``config.json`` "model" entry) before any network
is built from it: a crafted file is a ``ModelError`` naming the entry, never a RecursionError or a
ZeroDivisionError deep inside the network (issue 24)."""

from __future__ import annotations

import math

from ..errors import ModelError

CHECKSUM_KEY = "params_sha256"  # sha256 of NAME.msgpack's bytes, kept in NAME.json

_ARCH_FIELDS = {  # field: (kind, lower bound); lists are lists of that kind
    "mlp": {"width": (int, 1), "depth": (int, 0), "emb_dim": (int, 2)},
    "unet": {"channels": (int, 1), "ch_mult": ([int], 1), "num_res_blocks": (int, 0),
             "attn_resolutions": ([int], 1), "dropout": (float, 0.0), "num_heads": (int, 1)},
}


def _ok(value, kind, lo) -> bool:
    if isinstance(kind, list):
        return isinstance(value, (list, tuple)) and len(value) <= 16 and all(_ok(v, kind[0], lo) for v in value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= 1 << 20
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and lo <= value < 1


def validate_config(cfg, where: str) -> dict:
    """``cfg`` if it is a well-formed model config, else a ``ModelError`` naming the entry: a JSON object
    whose ``arch``, ``shape``, ``arch_kwargs`` (known fields, integers >= their bound, dropout in [0, 1)),
    ``process``, ``parametrization``, ``data`` and ``data_kwargs`` have the right types (what a crafted
    file would otherwise turn into a RecursionError or ZeroDivisionError deep in the network)."""
    if not isinstance(cfg, dict):
        raise ModelError(f"{where} is not a JSON object")
    arch = cfg.get("arch")
    if not isinstance(arch, str) or arch not in _ARCH_FIELDS:
        raise ModelError(f"{where}: 'arch' must be one of {tuple(_ARCH_FIELDS)}; got {arch!r}")
    kwargs = cfg.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelError(f"{where}: 'arch_kwargs' must be an object; got {type(kwargs).__name__}")
    for k, v in kwargs.items():
        if k not in _ARCH_FIELDS[arch]:
            raise ModelError(f"{where}: unknown {arch} setting {k!r} in 'arch_kwargs'; known: "
                             f"{sorted(_ARCH_FIELDS[arch])}")
        kind, lo = _ARCH_FIELDS[arch][k]
        if not _ok(v, kind, lo) or (k == "ch_mult" and not v):
            what = ("a list of 1 to 16 integers" if isinstance(kind, list) else
                    "an integer" if kind is int else "a number in [0, 1)")
            raise ModelError(f"{where}: arch_kwargs[{k!r}] must be {what} >= {lo}; got {v!r}")
    for k, kind in (("process", dict), ("data_kwargs", dict), ("parametrization", str), ("data", str),
                    ("name", str)):
        if k in cfg and not isinstance(cfg[k], kind):
            raise ModelError(f"{where}: {k!r} must be a JSON {'object' if kind is dict else 'string'}; "
                             f"got {cfg[k]!r:.80}")
    if CHECKSUM_KEY in cfg and not (isinstance(cfg[CHECKSUM_KEY], str) and len(cfg[CHECKSUM_KEY]) == 64):
        raise ModelError(f"{where}: {CHECKSUM_KEY!r} must be a sha256 hex digest")
    return cfg
