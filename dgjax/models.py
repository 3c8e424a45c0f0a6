"""Score networks (Flax linen), trained models, and the models shipped with dgjax.

Networks predict the noise eps from ``(x_t, lambda_t)`` -- they are conditioned on the log-SNR
``lambda_t = log(alpha_t^2 / sigma_t^2)``, not on t, so one network serves any parametrisation of time:

* ``MLP``: for low-dimensional data (the 2-D toys): the flattened input concatenated with a sinusoidal
  log-SNR embedding, ``depth`` SiLU layers of ``width``, a zero-initialised output layer.
* ``UNet``: for images (channels last): residual blocks (GroupNorm, SiLU, 3x3 conv, the log-SNR embedding
  added per channel, dropout), self-attention at the resolutions in ``attn_resolutions``, a middle block
  with attention, skip connections, and a zero-initialised output convolution.

``TrainedModel`` binds a network to its (EMA) parameters, its forward process and its config; its
``.score`` is a pure ``score(x, t)`` made by ``dg.score_from(..., parametrization)`` with the config's
parametrization ("eps" on ``VP``; "v", the velocity, on ``LinearFlow`` for flow-matching models), so every
sampler, ``dg.log_likelihood`` and ``dg.score_alignment`` work on it unchanged.

Files. A model is two files side by side: ``NAME.json`` (the config: architecture, shape, process, data
set, training settings and results) and ``NAME.msgpack`` (the parameters, ``flax.serialization``). Both
are written to a temporary name and renamed, so an interrupted write never leaves a half-written model.
Loading checks the stored parameter tree against the architecture in the config and refuses a mismatch
with an error naming the first differing entries.

``dg.load_model(name_or_path)`` accepts a shipped name (``SHIPPED_MODELS``: ``digits``, ``digits-flow``, ``patches``), a
``.msgpack`` file (its ``.json`` beside it), a directory holding ``model.msgpack``/``model.json`` (what
``dgjax train`` exports), or a training run directory (its latest orbax checkpoint; EMA parameters).
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from ._io import atomic_write, leaf_shapes, write_bytes_synced
from .parametrizations import score_from
from .processes import VP, LinearFlow

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
SHIPPED_MODELS = ("digits", "digits-flow", "patches")
FORMAT = "dgjax-model-1"


class ModelError(ValueError):
    """A model or checkpoint that cannot be used: unknown name, missing, corrupt or mismatched files."""


class ArchitectureMismatch(ModelError):
    """Stored parameters do not fit the architecture the config describes."""


# ------------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------------
def logsnr_embedding(lam, dim: int, scale: float = 50.0):
    """Sinusoidal embedding of the log-SNR: (N,) -> (N, dim); ``scale * lambda`` spans about +-500 on
    lambda in [-10, 10], like the usual 0..1000 time-step embeddings."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = (scale * lam.astype(jnp.float32))[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _broadcast_lam(lam, n):
    lam = jnp.asarray(lam, jnp.float32)
    return jnp.broadcast_to(lam, (n,)) if lam.ndim == 0 else lam


class MLP(nn.Module):
    """eps-predictor for flat low-dimensional data: x (N, *shape), lam (N,) -> (N, *shape)."""

    width: int = 256
    depth: int = 3
    emb_dim: int = 64
    dtype: Any = None  # compute dtype (None: float32); parameters stay float32

    @nn.compact
    def __call__(self, x, lam, train: bool = False):
        n, shape = x.shape[0], x.shape[1:]
        dt = _compute_dtype(self.dtype)
        lam = _broadcast_lam(lam, n)
        emb = nn.Dense(self.width, dtype=self.dtype)(logsnr_embedding(lam, self.emb_dim))
        h = jnp.concatenate([x.reshape(n, -1).astype(dt), nn.silu(emb).astype(dt)], axis=-1)
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.width, dtype=self.dtype)(h))
        out = nn.Dense(math.prod(shape), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        return out.reshape(x.shape)


def _compute_dtype(dtype):
    return jnp.float32 if dtype is None else dtype


def _groups(c):
    for g in (8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    out_ch: int
    dropout: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x, emb, train: bool):
        dt = self.dtype
        h = nn.silu(nn.GroupNorm(_groups(x.shape[-1]), dtype=dt)(x))
        h = nn.Conv(self.out_ch, (3, 3), dtype=dt)(h)
        h = h + nn.Dense(self.out_ch, dtype=dt)(emb)[:, None, None, :]
        h = nn.silu(nn.GroupNorm(_groups(self.out_ch), dtype=dt)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, dtype=dt)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), dtype=dt)(x)
        return x + h


class AttnBlock(nn.Module):
    num_heads: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        n, hh, ww, c = x.shape
        h = nn.GroupNorm(_groups(c), dtype=self.dtype)(x).reshape(n, hh * ww, c)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, out_kernel_init=nn.initializers.zeros,
                                            dtype=self.dtype)(h, h)
        return x + h.reshape(n, hh, ww, c)


class UNet(nn.Module):
    """eps-predictor for images x (N, H, W, C) conditioned on the log-SNR lam (N,).

    ``ch_mult[i] * channels`` channels at level i (resolution H / 2^i), ``num_res_blocks`` residual blocks
    per level (one more on the way up), attention where the resolution is in ``attn_resolutions``.
    """

    channels: int = 32
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (4,)
    dropout: float = 0.1
    num_heads: int = 1
    dtype: Any = None  # compute dtype (None: float32); parameters stay float32

    @nn.compact
    def __call__(self, x, lam, train: bool = False):
        n, res = x.shape[0], x.shape[1]
        dt = self.dtype
        lam = _broadcast_lam(lam, n)
        emb = logsnr_embedding(lam, self.channels)  # float32 (sin of 50 lambda needs it), cast by the Dense
        emb = nn.Dense(4 * self.channels, dtype=dt)(emb)
        emb = nn.Dense(4 * self.channels, dtype=dt)(nn.silu(emb))
        emb = nn.silu(emb)
        h = nn.Conv(self.channels, (3, 3), dtype=dt)(x.astype(_compute_dtype(dt)))
        skips = [h]
        for i, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.channels * mult, self.dropout, dt)(h, emb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(self.num_heads, dt)(h)
                skips.append(h)
            if i != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=dt)(h)
                res //= 2
                skips.append(h)
        h = ResBlock(h.shape[-1], self.dropout, dt)(h, emb, train)
        h = AttnBlock(self.num_heads, dt)(h)
        h = ResBlock(h.shape[-1], self.dropout, dt)(h, emb, train)
        for i, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResBlock(self.channels * mult, self.dropout, dt)(h, emb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(self.num_heads, dt)(h)
            if i != 0:
                h = jax.image.resize(h, (n, 2 * h.shape[1], 2 * h.shape[2], h.shape[3]), "nearest")
                h = nn.Conv(h.shape[-1], (3, 3), dtype=dt)(h)
                res *= 2
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), dtype=dt)(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, dtype=dt)(h)


ARCHITECTURES = {"mlp": MLP, "unet": UNet}


def make_network(arch: str, shape, arch_kwargs: dict | None = None) -> nn.Module:
    """The network ``arch`` ("mlp" or "unet") with ``arch_kwargs``, checked against the data ``shape``."""
    if arch not in ARCHITECTURES:
        raise ModelError(f"arch: unknown {arch!r}; choose one of {tuple(ARCHITECTURES)}")
    kwargs = dict(arch_kwargs or {})
    for k in ("ch_mult", "attn_resolutions"):
        if k in kwargs:
            kwargs[k] = tuple(kwargs[k])
    try:
        net = ARCHITECTURES[arch](**kwargs)
    except TypeError as e:
        raise ModelError(f"arch_kwargs for {arch!r}: {e}") from e
    shape = tuple(shape)
    if arch == "unet":
        if len(shape) != 3:
            raise ModelError(f"the unet needs image data of shape (H, W, C); got shape {shape}")
        down = 2 ** (len(net.ch_mult) - 1)
        if shape[0] % down or shape[1] % down:
            raise ModelError(f"the unet halves the resolution {len(net.ch_mult) - 1} times, so H and W must be "
                             f"multiples of {down}; got shape {shape}")
    return net


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(net, shape, key):
    # the initialisers draw from an RBG key derived from ``key``: XLA's RngBitGenerator compiles several
    # times faster than unrolled threefry for the dozens of parameter tensors of a UNet
    key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    x = jnp.zeros((1,) + shape, jnp.float32)
    return net.init({"params": key}, x, jnp.zeros((1,), jnp.float32), train=False)["params"]


def init_params(net: nn.Module, shape, key) -> dict:
    """Freshly initialised parameters: one compiled call (not op by op), cached per (network, shape)."""
    return _init(net, tuple(int(d) for d in shape), key)


def param_shapes(net: nn.Module, shape) -> dict:
    """The parameter tree of ``net`` on data ``shape`` as {path: shape} (no computation)."""
    tree = jax.eval_shape(lambda k: init_params(net, shape, k), jax.random.key(0))
    return leaf_shapes(tree)


def num_params(params) -> int:
    return int(sum(np.prod(np.shape(v)) for v in jax.tree_util.tree_leaves(params)))


def check_same_architecture(expected: dict, got: dict, where: str) -> None:
    """Raise ``ArchitectureMismatch`` naming the first differences between two {path: shape} maps."""
    if expected == got:
        return
    diffs = []
    for k in sorted(set(expected) | set(got)):
        a, b = expected.get(k), got.get(k)
        if a != b:
            diffs.append(f"{k}: architecture expects {a if a is not None else 'nothing'}, "
                         f"stored {b if b is not None else 'nothing'}")
    more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
    raise ArchitectureMismatch(
        f"{where} was written by a different architecture than the one configured: "
        + "; ".join(diffs[:5]) + more
        + ". Load it with the config it was trained with, or start a new run in another directory.")


# ------------------------------------------------------------------------------------------------------
# processes in configs
# ------------------------------------------------------------------------------------------------------
def process_from_config(cfg: dict):
    cfg = dict(cfg or {"name": "VP"})
    name = cfg.pop("name", "VP")
    if name not in ("VP", "LinearFlow"):  # LinearFlow: flow-matching models (dgjax train --objective flow)
        raise ModelError(f"process {name!r}: dgjax trains and loads models on the VP log-SNR process or on "
                         f"LinearFlow (flow matching) only (the networks are conditioned on lambda)")
    fields = {"lambda_min", "lambda_max"} if name == "VP" else {"eps"}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ModelError(f"model config: unknown process field(s) {unknown}; a {name} process takes "
                         f"{' and '.join(sorted(fields))}")
    try:
        return VP(**cfg) if name == "VP" else LinearFlow(**cfg)
    except (TypeError, ValueError) as e:
        raise ModelError(f"model config: invalid process {cfg}: {e}") from e


def process_to_config(process) -> dict:
    if isinstance(process, LinearFlow):
        return {"name": "LinearFlow", "eps": process.eps}
    return {"name": "VP", "lambda_min": process.lambda_min, "lambda_max": process.lambda_max}


# ------------------------------------------------------------------------------------------------------
# trained models
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A network with its parameters: ``.process``, ``.score`` (pure score(x, t)), ``.shape`` (per sample),
    ``.params`` (EMA parameters), ``.config`` (dict), ``.network`` (the flax module), ``.apply(x, t)``
    (the eps prediction), ``.dataset`` (the data set it was trained on, with its transform)."""

    network: nn.Module
    params: Any
    config: dict
    process: Any = None
    shape: tuple = ()
    parametrization: str = "eps"
    _score: Any = field(default=None, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "process", process_from_config(self.config.get("process")))
        object.__setattr__(self, "shape", tuple(self.config["shape"]))
        object.__setattr__(self, "parametrization", self.config.get("parametrization", "eps"))
        try:
            object.__setattr__(self, "_score", score_from(self.apply, self.process, self.parametrization))
        except ValueError as e:
            raise ModelError(f"model config: {e}") from e

    def apply(self, x, t):
        """The network's prediction (``.parametrization``: eps, or the velocity v for flow models) at
        (x (N, *shape), t scalar or (N,)), in x's dtype; dropout off."""
        lam = self.process.log_snr(jnp.asarray(t, jnp.float32))
        out = self.network.apply({"params": self.params}, x.astype(jnp.float32), lam, train=False)
        return out.astype(x.dtype)

    @property
    def score(self):
        return self._score

    @property
    def compute_dtype(self):
        """The dtype the network computes in (float32 unless made with ``with_compute_dtype``)."""
        return jnp.dtype(_compute_dtype(getattr(self.network, "dtype", None)))

    def with_compute_dtype(self, dtype) -> "TrainedModel":
        """The same model with the network computing in ``dtype`` (e.g. ``jnp.bfloat16``): mixed precision.

        Parameters stay float32 (cast per layer), the log-SNR embedding's sinusoids are computed in float32,
        and ``apply``/``score`` return the caller's dtype: the solver state (x) and the tracked log-density
        stay float32 (or float64 under x64), only the network's activations are rounded to ``dtype``.
        Rounding makes the vector field non-smooth at the dtype's relative precision (bfloat16: 2^-8), so
        pair it with constant ``steps`` or an adaptive tolerance no tighter than about 1e-3.
        Measured effect on the shipped digits model: README, section Scale.
        """
        dtype = jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ModelError(f"compute_dtype: expected a floating dtype such as jnp.bfloat16; got {dtype}")
        return TrainedModel(self.network.clone(dtype=None if dtype == jnp.float32 else dtype), self.params,
                            self.config)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def name(self) -> str:
        return self.config.get("name", "model")

    @property
    def dataset(self):
        from .data import load_dataset

        return load_dataset(self.config["data"], **self.config.get("data_kwargs", {}))

    @property
    def data_range(self) -> float | None:
        """r when the model's data lie in [-r, r] (1 for dequantised image data; None for continuous toys):
        pass it to ``dg.DensityGuidance(..., data_range=...)`` to be told when guidance leaves the data."""
        from .data import Dequantize

        return 1.0 if isinstance(self.dataset.transform, Dequantize) else None

    def prior_sample(self, key, n: int):
        return self.process.prior_sample(key, (n,) + self.shape)

    def __repr__(self):
        return (f"TrainedModel(name={self.name!r}, arch={self.config.get('arch')!r}, shape={self.shape}, "
                f"params={num_params(self.params)}, data={self.config.get('data')!r})")


def network_from_config(config: dict) -> nn.Module:
    for k in ("arch", "shape"):
        if k not in config:
            raise ModelError(f"model config lacks {k!r}; is it a dgjax model config ({FORMAT})?")
    shape = config["shape"]
    if not (isinstance(shape, (list, tuple)) and len(shape) >= 1
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ModelError(f"model config: 'shape' must be a list of positive integers (the per-sample shape); got {shape!r}")
    return make_network(config["arch"], config["shape"], config.get("arch_kwargs"))


def _atomic_write(path: str, data: bytes) -> None:
    atomic_write(path, write_bytes_synced(data), ModelError)


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


_RUN_LOADERS: list = []
"""Readers of model directories that hold no model.msgpack; ``dgjax.training`` adds ``load_run`` on import,
so the models layer never imports the training layer above it (docs/ARCHITECTURE.md)."""


def register_run_loader(loader) -> None:
    """Let ``load_model(directory)`` read a directory without model.msgpack with ``loader(path)``."""
    if loader not in _RUN_LOADERS:
        _RUN_LOADERS.append(loader)


def _load_model(name_or_path: str) -> TrainedModel:
    if isinstance(name_or_path, TrainedModel):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelError(f"load_model: expected a shipped model name {SHIPPED_MODELS}, a NAME.msgpack path or a run "
                         f"directory; got {name_or_path!r}")
    s = os.fspath(name_or_path)
    if s.startswith("galaxies-") and not os.path.exists(s):  # galaxygrad's pretrained networks (dgjax.galaxies)
        from .galaxies import load_galaxy_model

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
        if _RUN_LOADERS:  # a training run directory (dgjax.training registers its reader: imports go one way)
            return _RUN_LOADERS[0](s)
    raise ModelError(f"unknown model {s!r}: not a shipped model {SHIPPED_MODELS} and no such file or directory")
