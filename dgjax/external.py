"""External networks: per-sample models trained elsewhere, and models that live in a transformed space.

``external_score(net, process, parametrization)`` turns a per-sample function or module ``net(y, t)``
(``y`` one sample of shape ``shape``, ``t`` a scalar: an Equinox module, ``lambda y, t: flax_module.apply(
params, y, t)``, a Flax NNX module, any pure function) into a dgjax ``score(x (N, *shape), t)``: ``jax.vmap``
over the batch with ``t`` broadcast (a scalar t is shared; an (N,) t gives each sample its own), then the
parametrization conversion of docs/math.md section 2 (``dg.score_from``).

Transformed spaces. A network trained on ``y = T(x)`` of the data ``x`` (e.g. galaxygrad: y = log(x + 1) / 0.1)
defines a density of y; every dgjax log p is then a log-density *in the network's space* (the default: it is
what the ODE tracks). The density of x follows by the change of variables (docs/math.md section 4)

    log p_X(x) = log p_Y(T(x)) + log |det dT/dx|,   for an elementwise T: sum_i log |T'(x_i)|,

which ``ElementwiseTransform.data_log_prob(logp_y, y)`` applies (with x = T^{-1}(y)).
"""

import abc
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox import AbstractVar
from jaxtyping import Array

from ._checks import check_param
from .errors import InvalidArgument
from .parametrizations import PARAMETRIZATIONS, score_from
from .processes import Process


class AbstractModel(eqx.Module):
    """A score model with what it was trained for, as a pytree whose leaves are its parameters (everything
    else static), so ``jax.grad(loss)(model)`` differentiates with respect to every parameter and
    ``model.score`` (a bound method: a pytree holding the model) is a pure function of the model.

    ``dg.sample(model, x_T, ...)`` and ``dg.log_likelihood(model, x, ...)`` take a model in place of
    (score, process): they use its ``process`` and check guidance samplers against its ``data_range``.
    Concrete models: ``dg.TrainedModel``, ``dg.GalaxyModel``.
    """

    process: AbstractVar[Process]
    shape: AbstractVar[tuple]

    @abc.abstractmethod
    def score(self, x: Array, t) -> Array:
        """grad_x log p_t(x) for x (N, *shape), t scalar or (N,)."""

    @property
    @abc.abstractmethod
    def data_range(self) -> float | None:
        """r when the model's data lie in [-r, r] (guidance samplers then report leaving it); None: unbounded."""

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def prior_sample(self, key, n: int) -> Array:
        return self.process.prior_sample(key, (n,) + tuple(self.shape))


class Opaque:
    """A static value compared and hashed by identity (a network's non-array structure, which need not be
    hashable), for ``eqx.field(static=True)``."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def batched(net: Callable) -> Callable:
    """``net(y (*shape), t scalar) -> like y`` as ``fn(x (N, *shape), t scalar or (N,)) -> (N, *shape)``."""

    def fn(x, t):
        t = jnp.asarray(t, dtype=x.dtype)
        if t.ndim == 0:
            return jax.vmap(lambda y: net(y, t))(x)
        if t.shape != (x.shape[0],):
            raise InvalidArgument(f"t: expected a scalar or shape ({x.shape[0]},) (one time per sample); got {t.shape}")
        return jax.vmap(net)(x, t)

    return fn


class ExternalScore(eqx.Module):
    """``dg.external_score``'s score: ``score(x (N, *shape), t)`` from a per-sample ``net(y, t)``; a pytree whose
    leaves are the network's (an Equinox module's arrays), so gradients and every adjoint reach them."""

    net: Callable
    process: Process = eqx.field(static=True)
    parametrization: str = eqx.field(static=True)
    dtype: Any = eqx.field(static=True, default=None)

    def __call__(self, x: Array, t) -> Array:
        fn = batched(self.net)
        if self.dtype is not None:
            inner = fn

            def fn(x, t):  # compute in self.dtype, return x's dtype
                return inner(x.astype(self.dtype), jnp.asarray(t).astype(self.dtype)).astype(x.dtype)

        return score_from(fn, self.process, self.parametrization)(x, t)


def external_score(net: Callable, process, parametrization: str = "score", *, dtype=None) -> ExternalScore:
    """A dgjax score from a per-sample network ``net(y, t)`` (scalar ``t``) predicting ``parametrization``
    ("eps", "x0", "v" or "score") for ``process``. ``dtype``: compute the network in this dtype (e.g. float32
    for a float32-trained model under x64) and cast its output back to x's dtype. The score is a pytree:
    pass an Equinox module (or ``eqx.Partial``) as ``net`` for its parameters to be leaves (gradients with
    ``eqx.filter_grad``); a closure's captured parameters stay invisible to ``jax.grad``."""
    check_param(parametrization in PARAMETRIZATIONS, "parametrization",
                f"unknown {parametrization!r}; choose one of {PARAMETRIZATIONS}")
    check_param(isinstance(process, Process), "process",
                f"expected a process object such as dg.VP() or dg.LinearFlow(); got {process!r:.60}")
    if dtype is not None:  # an integer or bool dtype would truncate every input silently
        try:
            dtype = jnp.dtype(dtype)
        except TypeError:
            dtype = None
        check_param(dtype is not None and jnp.issubdtype(dtype, jnp.floating), "dtype",
                    "expected a floating dtype such as jnp.float32 (the network's compute precision)")
    return ExternalScore(net, process, parametrization, dtype)


class ElementwiseTransform(eqx.Module):
    """y = forward(x) applied elementwise (data space x -> network space y), with its inverse.

    ``log_abs_det(x)``: log |det dy/dx| = sum_i log |forward'(x_i)| per sample, (N, *shape) -> (N,), from a
    forward-mode derivative (no hand-written derivative to get wrong).
    """

    forward: Callable = eqx.field(static=True)
    inverse: Callable = eqx.field(static=True)

    def log_abs_det(self, x: Array) -> Array:
        _, d = jax.jvp(self.forward, (x,), (jnp.ones_like(x),))
        return jnp.sum(jnp.reshape(jnp.log(jnp.abs(d)), (x.shape[0], -1)), axis=-1)

    def data_log_prob(self, logp_y: Array, y: Array) -> Array:
        """log p_X(x) at x = inverse(y) from the network-space log p_Y(y): logp_y + log|dy/dx|."""
        return logp_y + self.log_abs_det(self.inverse(y))


def log_transform(scale: float = 0.1, offset: float = 1.0) -> ElementwiseTransform:
    """y = log(x + offset) / scale (galaxygrad's network space: scale 0.1, offset 1); x > -offset."""
    scale, offset = float(scale), float(offset)
    if not (scale > 0 and math.isfinite(offset)):
        raise InvalidArgument(f"scale: need scale > 0 and a finite offset; got {scale}, {offset}")
    return ElementwiseTransform(lambda x: jnp.log(x + offset) / scale, lambda y: jnp.exp(scale * y) - offset)
