"""Model parametrizations converted to a score function (MATH.md section 2).

With ``x_t = alpha x_0 + sigma eps`` a network may predict eps, x_0, the velocity, or the score:

    eps:    s = -eps_hat / sigma
    x0:     s = (alpha x0_hat - x) / sigma^2
    v:      v = alpha' x0_hat + sigma' eps_hat is exactly the PF-ODE drift u = f x - 1/2 g^2 s
            (substitute eps_hat = (alpha v - alpha' x) / (alpha sigma' - alpha' sigma) into s = -eps/sigma),
            so s = 2 (f x - v) / g^2
    score:  s = prediction

Every sampler consumes one thing only: a pure ``score(x, t) -> array like x``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ._checks import bcast

PARAMETRIZATIONS = ("eps", "x0", "v", "score")


def _coefficients(process, t, x):
    """The process's ``Coefficients`` at t (already in x's dtype), each broadcast against x."""
    return jax.tree_util.tree_map(lambda v: bcast(v, x), process.coefficients(t))


def score_from(model_fn: Callable, process, parametrization: str = "eps") -> Callable:
    """Wrap ``model_fn(x (N, *shape), t scalar or (N,)) -> prediction like x`` as ``score(x, t)``.

    Args:
      model_fn: the network (any pure function of x and t).
      process: the forward process the model was trained for (gives alpha, sigma, f, g2).
      parametrization: what the model predicts: "eps", "x0", "v" (velocity d/dt x_t) or "score".
    """
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization: unknown {parametrization!r}; choose one of {PARAMETRIZATIONS}")

    def score(x, t):
        t = jnp.asarray(t, dtype=x.dtype)
        pred = model_fn(x, t)
        if parametrization == "score":
            return pred
        c = _coefficients(process, t, x)
        if parametrization == "eps":
            return -pred / c.sigma
        if parametrization == "x0":
            return (c.alpha * pred - x) / c.sigma**2
        return 2.0 * (c.f * x - pred) / c.g2

    return score


def score_to(score: Callable, process, parametrization: str) -> Callable:
    """The inverse conversion: express a score function as an eps / x0 / v / score predictor."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization: unknown {parametrization!r}; choose one of {PARAMETRIZATIONS}")

    def model(x, t):
        t = jnp.asarray(t, dtype=x.dtype)
        s = score(x, t)
        if parametrization == "score":
            return s
        c = _coefficients(process, t, x)
        if parametrization == "eps":
            return -c.sigma * s
        if parametrization == "x0":
            return (x + c.sigma**2 * s) / c.alpha
        return c.f * x - 0.5 * c.g2 * s

    return model
