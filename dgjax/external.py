"""External networks: per-sample models trained elsewhere, and models that live in a transformed space.

``external_score(net, process, parametrization)`` turns a per-sample function or module ``net(y, t)``
(``y`` one sample of shape ``shape``, ``t`` a scalar: an Equinox module, ``lambda y, t: flax_module.apply(
params, y, t)``, a Flax NNX module, any pure function) into a dgjax ``score(x (N, *shape), t)``: ``jax.vmap``
over the batch with ``t`` broadcast (a scalar t is shared; an (N,) t gives each sample its own), then the
parametrization conversion of MATH.md section 2 (``dg.score_from``).

Transformed spaces. A network trained on ``y = T(x)`` of the data ``x`` (e.g. galaxygrad: y = log(x + 1) / 0.1)
defines a density of y; every dgjax log p is then a log-density *in the network's space* (the default: it is
what the ODE tracks). The density of x follows by the change of variables (MATH.md section 4)

    log p_X(x) = log p_Y(T(x)) + log |det dT/dx|,   for an elementwise T: sum_i log |T'(x_i)|,

which ``ElementwiseTransform.data_log_prob(logp_y, y)`` applies (with x = T^{-1}(y)).
"""

from __future__ import annotations

import math
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .parametrizations import score_from

Array = jax.Array


def batched(net: Callable) -> Callable:
    """``net(y (*shape), t scalar) -> like y`` as ``fn(x (N, *shape), t scalar or (N,)) -> (N, *shape)``."""

    def fn(x, t):
        t = jnp.asarray(t, dtype=x.dtype)
        if t.ndim == 0:
            return jax.vmap(lambda y: net(y, t))(x)
        if t.shape != (x.shape[0],):
            raise ValueError(f"t: expected a scalar or shape ({x.shape[0]},) (one time per sample); got {t.shape}")
        return jax.vmap(net)(x, t)

    return fn


def external_score(net: Callable, process, parametrization: str = "score", *, dtype=None) -> Callable:
    """A dgjax score from a per-sample network ``net(y, t)`` (scalar ``t``) predicting ``parametrization``
    ("eps", "x0", "v" or "score") for ``process``. ``dtype``: compute the network in this dtype (e.g. float32
    for a float32-trained model under x64) and cast its output back to x's dtype."""
    fn = batched(net)
    if dtype is not None:
        inner = fn

        def fn(x, t):  # noqa: F811 -- the cast wrapper
            return inner(x.astype(dtype), jnp.asarray(t).astype(dtype)).astype(x.dtype)

    return score_from(fn, process, parametrization)


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
        raise ValueError(f"scale: need scale > 0 and a finite offset; got {scale}, {offset}")
    return ElementwiseTransform(lambda x: jnp.log(x + offset) / scale, lambda y: jnp.exp(scale * y) - offset)
