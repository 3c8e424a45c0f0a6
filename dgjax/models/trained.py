"""The trained-model object: a network bound to its (EMA) parameters, its forward process and its config.

``TrainedModel`` is a pytree (an Equinox module) whose leaves are the parameters. ``TrainedModel.score`` is a
pure ``score(x, t)`` of the model, ``dg.score_from(..., parametrization)`` with the config's parametrization
("eps" on ``VP``; "v", the velocity, on ``LinearFlow`` for flow-matching models), so every sampler,
``dg.log_likelihood`` and ``dg.score_alignment`` work on it unchanged, and gradients reach the parameters.
"""

from __future__ import annotations

import json
from typing import Any, cast

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp

from .. import processes
from ..errors import ModelError
from ..external import AbstractModel
from ..likelihood import log_likelihood
from ..parametrizations import PARAMETRIZATIONS, score_from
from ..sampling import sample
from .networks import _compute_dtype, make_network, num_params

FORMAT = "dgjax-model-1"


# ------------------------------------------------------------------------------------------------------
# processes in configs
# ------------------------------------------------------------------------------------------------------
MODEL_PROCESSES = ("VP", "LinearFlow")  # LinearFlow: flow-matching models (dgjax train --objective flow)


def process_from_config(cfg: dict | None):
    """A model config's process through the registry (``dgjax.processes.process_from_config``), limited to the
    processes dgjax trains and loads models on; errors are ``ModelError``."""
    cfg = dict(cfg or {"name": "VP"})
    cfg.setdefault("name", "VP")
    if cfg["name"] not in MODEL_PROCESSES:
        raise ModelError(f"process {cfg['name']!r}: dgjax trains and loads models on the VP log-SNR process or on "
                         f"LinearFlow (flow matching) only (the networks are conditioned on lambda)")
    try:
        return processes.process_from_config(cfg)
    except (TypeError, ValueError) as e:
        raise ModelError(f"model config: invalid process {cfg}: {e}") from e


def process_to_config(process) -> dict:
    return processes.process_to_config(process)


# ------------------------------------------------------------------------------------------------------
# models: sampling and likelihood through the model
# ------------------------------------------------------------------------------------------------------
class Model(AbstractModel):
    """A dgjax model's calls that carry what the model knows (its process; its data range, which guidance
    samplers check: leaving it raises ``dg.LeftDataRange``): ``model.sample(x_T, ...)`` is
    ``dg.sample(model, x_T, ...)`` and ``model.log_likelihood(x, ...)`` is ``dg.log_likelihood(model, x, ...)``
    (keyword arguments as theirs)."""

    def sample(self, x_T, **kwargs):
        return sample(self, x_T, **kwargs)

    def log_likelihood(self, x, **kwargs):
        return log_likelihood(self, x, **kwargs)


class _Config(dict):
    """A model's config (a JSON dict) as a static pytree field: hashed by its JSON text, so jit caches on it."""

    def __hash__(self):
        return hash(json.dumps(self, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------------------------
# trained models
# ------------------------------------------------------------------------------------------------------
class TrainedModel(Model):
    """A network with its parameters, as a pytree: ``.params`` (the EMA parameters) are its leaves; the rest is
    static: ``.network`` (the flax module), ``.config`` (dict), ``.process``, ``.shape`` (per sample),
    ``.parametrization``. ``.score(x, t)`` (a pure function of the model), ``.apply(x, t)`` (the eps or v
    prediction), ``.dataset`` (the data set it was trained on, with its transform).
    ``jax.grad(lambda m: loss(m))(model)`` is a ``TrainedModel`` whose ``params`` are the gradients."""

    network: nn.Module = eqx.field(static=True)
    params: Any
    config: dict = eqx.field(static=True)
    process: Any = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)
    parametrization: str = eqx.field(static=True)

    def __init__(self, network: nn.Module, params, config: dict):
        self.network = network
        self.params = params
        self.config = _Config(config)
        self.process = process_from_config(config.get("process"))
        self.shape = tuple(config["shape"])
        self.parametrization = config.get("parametrization", "eps")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ModelError(f"model config: parametrization: unknown {self.parametrization!r}; choose one of "
                             f"{PARAMETRIZATIONS}")

    def apply(self, x, t):
        """The network's prediction (``.parametrization``: eps, or the velocity v for flow models) at
        (x (N, *shape), t scalar or (N,)), in x's dtype; dropout off."""
        lam = self.process.log_snr(jnp.asarray(t, jnp.float32))
        # flax types apply() as an output or (output, state) (with mutable=...): here it is the output
        out = self.network.apply({"params": self.params}, x.astype(jnp.float32), lam, train=False)
        out = cast(jax.Array, out)
        return out.astype(x.dtype)

    def score(self, x, t):
        """The score from the network's prediction (``dg.score_from``, docs/math.md section 2), like x."""
        return score_from(self.apply, self.process, self.parametrization)(x, t)

    @property
    def compute_dtype(self):
        """The dtype the network computes in (float32 unless made with ``with_compute_dtype``)."""
        return jnp.dtype(_compute_dtype(getattr(self.network, "dtype", None)))

    def with_compute_dtype(self, dtype) -> TrainedModel:
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
    def name(self) -> str:
        return self.config.get("name", "model")

    @property
    def dataset(self):
        from ..data import load_dataset

        return load_dataset(self.config["data"], **self.config.get("data_kwargs", {}))

    @property
    def data_range(self) -> float | None:
        """r when the model's data lie in [-r, r] (1 for dequantised image data; None for continuous toys):
        ``dg.sample(model, ...)`` / ``model.sample`` give it to guidance samplers, which then report leaving it."""
        from ..data import Dequantize

        return 1.0 if isinstance(self.dataset.transform, Dequantize) else None

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
        raise ModelError(f"model config: 'shape' must be a list of positive integers (the per-sample shape); "
                         f"got {shape!r}")
    return make_network(config["arch"], config["shape"], config.get("arch_kwargs"))


