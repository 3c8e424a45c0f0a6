"""Model files and ``dg.load_model``.

A model is two files side by side: ``NAME.json`` (the config: architecture, shape, process, data set,
training settings and results) and ``NAME.msgpack`` (the parameters, ``flax.serialization``). Both are
written atomically (``_io.atomic_write``), so an interrupted write never leaves a half-written model.
Loading checks the stored parameter tree against the architecture in the config and refuses a mismatch
with an error naming the first differing entries.

``dg.load_model(name_or_path)`` accepts a shipped name (``SHIPPED_MODELS``: ``digits``, ``digits-flow``,
``patches``), a ``.msgpack`` file (its ``.json`` beside it), a directory holding ``model.msgpack`` /
``model.json`` (what ``dgjax train`` exports), a training run directory (its latest orbax checkpoint, EMA
parameters: ``models.checkpoints.load_run``), or a galaxygrad model name (``galaxies-*``,
``models.galaxies``).
"""

from __future__ import annotations

import json
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from .._io import atomic_write, leaf_shapes, write_bytes
from ..errors import ModelError
from .checkpoints import load_run
from .galaxies import load_galaxy_model
from .networks import check_same_architecture, param_shapes
from .trained import FORMAT, TrainedModel, network_from_config

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
SHIPPED_MODELS = ("digits", "digits-flow", "patches")


def _atomic_write(path: str, data: bytes) -> None:
    atomic_write(path, write_bytes(data), ModelError)


def save_model(prefix: str, params, config: dict) -> tuple[str, str]:
    """Write ``prefix.msgpack`` (params) and ``prefix.json`` (config), each atomically. Returns the paths."""
    net = network_from_config(config)
    check_same_architecture(param_shapes(net, config["shape"]), leaf_shapes(params), "the parameters to save")
    cfg = dict(config, format=FORMAT)
    params_np = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float32), params)
    blob = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(params_np))
    _atomic_write(prefix + ".msgpack", blob)
    _atomic_write(prefix + ".json", (json.dumps(cfg, indent=1, sort_keys=True) + "\n").encode())
    return prefix + ".msgpack", prefix + ".json"


def _read_config(path: str) -> dict:
    try:
        with open(path) as fh:
            cfg = json.load(fh)
    except FileNotFoundError:
        raise ModelError(f"model config {path!r} is missing (a model is NAME.json beside NAME.msgpack)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"model config {path!r} is corrupt or truncated: {e}") from e
    if not isinstance(cfg, dict):
        raise ModelError(f"model config {path!r} is not a JSON object")
    return cfg


def params_from_bytes(blob: bytes, config: dict, where: str):
    """Decode msgpack parameters and check them against the config's architecture."""
    net = network_from_config(config)
    try:
        state = flax.serialization.msgpack_restore(blob)
    except Exception as e:  # msgpack raises several exception types on damaged input
        raise ModelError(f"{where} is corrupt or truncated (could not decode the parameters: "
                         f"{type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ModelError(f"{where} is corrupt: it holds {type(state).__name__}, not a parameter tree")
    check_same_architecture(param_shapes(net, config["shape"]), leaf_shapes(state), where)
    check_params_finite(state, where)
    return jax.tree_util.tree_map(jnp.asarray, state)


def check_params_finite(params, where: str) -> None:
    """Raise ``ModelError`` naming the first parameter with NaN/inf entries (a damaged file or checkpoint
    would otherwise load and then make every solve fail or run to max_steps)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            raise ModelError(f"{where} is corrupt: parameter {jax.tree_util.keystr(path)} holds "
                             f"{int((~np.isfinite(a)).sum())} non-finite values (NaN or inf); re-export or "
                             f"re-download the model")


def load_model_files(prefix: str) -> TrainedModel:
    config = _read_config(prefix + ".json")
    try:
        with open(prefix + ".msgpack", "rb") as fh:
            blob = fh.read()
    except FileNotFoundError:
        raise ModelError(f"model parameters {prefix + '.msgpack'!r} are missing") from None
    params = params_from_bytes(blob, config, f"model file {prefix + '.msgpack'!r}")
    return TrainedModel(network_from_config(config), params, config)


def load_model(name_or_path: str, *, compute_dtype=None) -> TrainedModel:
    """Load a trained model: a shipped name (``SHIPPED_MODELS``), a ``.msgpack`` file, a directory with
    ``model.msgpack``/``model.json``, or a ``dgjax train`` run directory (latest checkpoint, EMA params).

    ``compute_dtype`` (e.g. ``jnp.bfloat16``): run the network in that dtype while the solver state and the
    log-density stay in the caller's precision (``TrainedModel.with_compute_dtype``); default float32."""
    model = _load_model(name_or_path)
    if compute_dtype is not None and not isinstance(model, TrainedModel):
        raise ModelError(f"compute_dtype: only dgjax-trained models support it; {name_or_path!r} does not")
    return model if compute_dtype is None else model.with_compute_dtype(compute_dtype)


def _load_model(name_or_path: str) -> TrainedModel:
    if isinstance(name_or_path, TrainedModel):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelError(f"load_model: expected a shipped model name {SHIPPED_MODELS}, a NAME.msgpack path or a run "
                         f"directory; got {name_or_path!r}")
    s = os.fspath(name_or_path)
    if s.startswith("galaxies-") and not os.path.exists(s):  # galaxygrad's pretrained networks (models.galaxies)
        try:
            return load_galaxy_model(s)
        except ImportError as e:  # galaxygrad missing or another version
            raise ModelError(str(e)) from e
    if s in SHIPPED_MODELS and not os.path.exists(s):
        prefix = os.path.join(WEIGHTS_DIR, s)
        if not os.path.exists(prefix + ".msgpack"):
            raise ModelError(f"the shipped model {s!r} is missing from the installed package ({prefix}.msgpack); "
                             f"reinstall dgjax")
        return load_model_files(prefix)
    if os.path.isfile(s):
        if s.endswith(".msgpack"):
            return load_model_files(s[: -len(".msgpack")])
        if s.endswith(".json"):
            return load_model_files(s[: -len(".json")])
        raise ModelError(f"model file {s!r}: expected NAME.msgpack (with NAME.json beside it)")
    if os.path.isdir(s):
        if os.path.exists(os.path.join(s, "model.msgpack")):
            return load_model_files(os.path.join(s, "model"))
        return load_run(s)  # a `dgjax train` run directory (or a clear error saying it is none)
    raise ModelError(f"unknown model {s!r}: not a shipped model {SHIPPED_MODELS} and no such file or directory")
