"""Model files and ``dg.load_model``.

A model is two files side by side: ``NAME.json`` (the config: architecture, shape, process, data set,
training settings and results, and ``params_sha256``, the sha256 of ``NAME.msgpack``) and ``NAME.msgpack``
(the parameters, ``flax.serialization``). Both are written atomically (``_io.atomic_write``), the parameters
first, so an interrupted write never leaves a half-written model (a new ``.msgpack`` beside an old ``.json``
fails the checksum). Loading reads regular files of bounded size only, validates the config, and checks
the stored parameters against the architecture (paths, shapes and dtypes), for finiteness and against the
checksum; every failure is a ``ModelError`` (``ArchitectureMismatch`` for the architecture) naming the file.

``dg.load_model(name_or_path)`` accepts a shipped name (``SHIPPED_MODELS``: ``digits``, ``digits-flow``,
``patches``; a bare shipped or galaxy name always means that model, even where a folder of that name
exists: write ``./digits`` for the folder), a ``.msgpack`` file (its ``.json`` beside it), a directory holding
``model.msgpack`` / ``model.json`` (what ``dgjax train`` exports), a training run directory (its latest orbax
checkpoint, EMA parameters: ``models.checkpoints.load_run``), or a galaxygrad model name (``galaxies-*``,
``models.galaxies``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from .._io import atomic_write, leaf_shapes, read_regular_file, write_bytes
from ..errors import ArchitectureMismatch, ModelError
from .checkpoints import load_run
from .configs import CHECKSUM_KEY, validate_config
from .galaxies import GALAXY_MODELS, GalaxyModel, load_galaxy_model
from .networks import check_same_architecture, init_params
from .trained import FORMAT, TrainedModel, network_from_config

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
SHIPPED_MODELS = ("digits", "digits-flow", "patches")


MAX_CONFIG_BYTES = 1 << 20  # a model config is a few kB; anything far larger is not one


class UnverifiedModelWarning(UserWarning):
    """A model file without a parameter checksum (written before dgjax kept them) was loaded unverified."""


def _atomic_write(path: str, data: bytes) -> None:
    atomic_write(path, write_bytes(data), ModelError)


def _param_specs(net, shape) -> dict:
    """``{path: ShapeDtypeStruct}`` of the parameters of ``net`` on data ``shape`` (no computation)."""
    tree = jax.eval_shape(lambda k: init_params(net, shape, k), jax.random.key(0))
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _check_dtypes(specs: dict, params, where: str) -> None:
    """Raise ``ArchitectureMismatch`` naming the first parameters whose dtype is not the architecture's."""
    diffs = [f"{k}: architecture expects {specs[k].dtype}, stored {np.asarray(v).dtype}"
             for k, v in ((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_leaves_with_path(params))
             if k in specs and np.asarray(v).dtype != specs[k].dtype]
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ArchitectureMismatch(f"{where} holds parameters of another dtype than the architecture's: "
                                   + "; ".join(diffs[:3]) + more + ". Re-export the model with dg.save_model.")


def save_model(prefix: str, params, config: dict) -> tuple[str, str]:
    """Write ``prefix.msgpack`` (params) and ``prefix.json`` (config with the parameters' sha256), each
    atomically, the parameters first. Returns the paths. The parameters must have the architecture's
    shapes and real floating dtypes (stored as float32, the architecture's dtype)."""
    net = network_from_config(validate_config(config, "the config to save"))
    specs = _param_specs(net, config["shape"])
    check_same_architecture({k: v.shape for k, v in specs.items()}, leaf_shapes(params), "the parameters to save")
    bad = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(params)
           if not jnp.issubdtype(np.asarray(v).dtype, jnp.floating)]
    if bad:
        raise ArchitectureMismatch(f"the parameters to save must be real floating-point arrays; {bad[:3]} are not")
    params_np = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float32), params)
    blob = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(params_np))
    cfg = dict(config, format=FORMAT, **{CHECKSUM_KEY: hashlib.sha256(blob).hexdigest()})
    _atomic_write(prefix + ".msgpack", blob)
    _atomic_write(prefix + ".json", (json.dumps(cfg, indent=1, sort_keys=True) + "\n").encode())
    return prefix + ".msgpack", prefix + ".json"


def _read(path: str, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path`` (a regular file of at most ``max_bytes``), or a ``ModelError``."""
    try:
        return read_regular_file(path, max_bytes)
    except FileNotFoundError:
        raise ModelError(f"{what} {path!r} is missing (a model is NAME.json beside NAME.msgpack)") from None
    except OSError as e:
        raise ModelError(f"{what} {path!r} cannot be read: {e}") from e


def _read_config(path: str) -> dict:
    text = _read(path, MAX_CONFIG_BYTES, "model config")
    try:
        cfg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"model config {path!r} is corrupt or truncated: {e}") from e
    except RecursionError:
        raise ModelError(f"model config {path!r} is nested too deeply to be a model config") from None
    return validate_config(cfg, f"model config {path!r}")


def _expected_bytes(specs: dict) -> int:
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in specs.values())


def params_from_bytes(blob: bytes, config: dict, where: str):
    """Decode msgpack parameters and check them against the config: the architecture's parameter paths,
    shapes and dtypes (``ArchitectureMismatch``), finite values, and the config's ``params_sha256``
    (``ModelError``; a config without one loads with an ``UnverifiedModelWarning``)."""
    net = network_from_config(config)
    specs = _param_specs(net, config["shape"])
    try:
        state = flax.serialization.msgpack_restore(blob)
    except Exception as e:  # msgpack raises several exception types on damaged input
        raise ModelError(f"{where} is corrupt or truncated (could not decode the parameters: "
                         f"{type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ModelError(f"{where} is corrupt: it holds {type(state).__name__}, not a parameter tree")
    check_same_architecture({k: v.shape for k, v in specs.items()}, leaf_shapes(state), where)
    _check_dtypes(specs, state, where)
    check_params_finite(state, where)
    expected = config.get(CHECKSUM_KEY)
    if expected is None:
        warnings.warn(f"{where}: its config has no {CHECKSUM_KEY!r} (written before dgjax kept checksums), so "
                      f"the parameters are unverified; re-save it with dg.save_model to add one",
                      UnverifiedModelWarning, stacklevel=3)
    elif hashlib.sha256(blob).hexdigest() != expected:
        raise ModelError(f"{where} is corrupt: its bytes differ from the {CHECKSUM_KEY} in its config (a damaged "
                         f"or altered file, or a .msgpack from another save than its .json); re-export or "
                         f"re-download the model")
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
    specs = _param_specs(network_from_config(config), config["shape"])
    blob = _read(prefix + ".msgpack", 2 * _expected_bytes(specs) + (1 << 20), "model parameters")
    params = params_from_bytes(blob, config, f"model file {prefix + '.msgpack'!r}")
    return TrainedModel(network_from_config(config), params, config)


def load_model(name_or_path: str, *, compute_dtype=None) -> TrainedModel | GalaxyModel:
    """Load a trained model: a shipped name (``SHIPPED_MODELS``), a galaxy model name (``GALAXY_MODELS``), a
    ``.msgpack`` file, a directory with ``model.msgpack``/``model.json``, or a ``dgjax train`` run directory
    (latest checkpoint, EMA params). A bare shipped or galaxy name always means that model; a folder of
    the same name in the working directory is loaded by a path (``./digits``).

    ``compute_dtype`` (e.g. ``jnp.bfloat16``): run the network in that dtype while the solver state and the
    log-density stay in the caller's precision (``TrainedModel.with_compute_dtype``); default float32."""
    model = _load_model(name_or_path)
    if compute_dtype is None:
        return model
    if not isinstance(model, TrainedModel):
        raise ModelError(f"compute_dtype: only dgjax-trained models support it; {name_or_path!r} does not")
    return model.with_compute_dtype(compute_dtype)


def _load_model(name_or_path: str) -> TrainedModel | GalaxyModel:
    if isinstance(name_or_path, TrainedModel):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelError(f"load_model: expected a shipped model name {SHIPPED_MODELS}, a NAME.msgpack path or a run "
                         f"directory; got {name_or_path!r}")
    s = os.fspath(name_or_path)
    if s in GALAXY_MODELS:  # galaxygrad's pretrained networks (models.galaxies)
        try:
            return load_galaxy_model(s)
        except ImportError as e:  # galaxygrad missing or another version
            raise ModelError(str(e)) from e
    if s.startswith("galaxies-") and not os.path.exists(s):
        raise ModelError(f"unknown galaxy model {s!r}; choose one of {GALAXY_MODELS}")
    if s in SHIPPED_MODELS:  # a bare shipped name wins over a folder of that name (./NAME loads the folder)
        prefix = os.path.join(WEIGHTS_DIR, s)
        if not os.path.exists(prefix + ".msgpack"):
            raise ModelError(f"the shipped model {s!r} is missing from the installed package ({prefix}.msgpack); "
                             f"reinstall dgjax")
        return load_model_files(prefix)
    if os.path.isdir(s):
        if os.path.exists(os.path.join(s, "model.msgpack")):
            return load_model_files(os.path.join(s, "model"))
        return load_run(s)  # a `dgjax train` run directory (or a clear error saying it is none)
    if os.path.lexists(s):
        if s.endswith(".msgpack"):
            return load_model_files(s[: -len(".msgpack")])
        if s.endswith(".json"):
            return load_model_files(s[: -len(".json")])
        raise ModelError(f"model file {s!r}: expected NAME.msgpack (with NAME.json beside it)")
    raise ModelError(f"unknown model {s!r}: not a shipped model {SHIPPED_MODELS} and no such file or directory")
