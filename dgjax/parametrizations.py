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

import jax.numpy as jnp

from ._checks import bcast

PARAMETRIZATIONS = ("eps", "x0", "v", "score")


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
        alpha, sigma, f, g2 = (bcast(c, x) for c in process.coefficients(t))
        if parametrization == "eps":
            return -pred / sigma
        if parametrization == "x0":
            return (alpha * pred - x) / sigma**2
        return 2.0 * (f * x - pred) / g2

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
        alpha, sigma, f, g2 = (bcast(c, x) for c in process.coefficients(t))
        if parametrization == "eps":
            return -sigma * s
        if parametrization == "x0":
            return (x + sigma**2 * s) / alpha
        return f * x - 0.5 * g2 * s

    return model
