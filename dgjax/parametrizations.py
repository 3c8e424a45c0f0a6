"""Model parametrizations converted to a score function (docs/math.md section 2).

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

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._checks import bcast
from .errors import InvalidArgument

PARAMETRIZATIONS = ("eps", "x0", "v", "score")


def _coefficients(process, t, x):
    """The process's ``Coefficients`` at t (already in x's dtype), each broadcast against x."""
    return jax.tree_util.tree_map(lambda v: bcast(v, x), process.coefficients(t))


def x0_from_score(alpha, sigma, x, s):
    """Tweedie's formula E[x_0 | x_t] = (x_t + sigma_t^2 s(x_t, t)) / alpha_t (docs/math.md 2, 9); alpha, sigma
    broadcast against x."""
    return (x + sigma**2 * s) / alpha


def score_from_x0(alpha, sigma, x, x0):
    """Tweedie's formula solved for the score: s = (alpha_t x0 - x_t) / sigma_t^2 (docs/math.md 2)."""
    return (alpha * x0 - x) / sigma**2


# the conversions at t (Coefficients c broadcast against x): prediction -> score, and score -> prediction
_TO_SCORE = {
    "eps": lambda c, x, eps: -eps / c.sigma,
    "x0": lambda c, x, x0: score_from_x0(c.alpha, c.sigma, x, x0),
    "v": lambda c, x, v: 2.0 * (c.f * x - v) / c.g2,
}
_FROM_SCORE = {
    "eps": lambda c, x, s: -c.sigma * s,
    "x0": lambda c, x, s: x0_from_score(c.alpha, c.sigma, x, s),
    "v": lambda c, x, s: c.f * x - 0.5 * c.g2 * s,
}


def _convert(fn: Callable, process, parametrization: str, rules: dict) -> Callable:
    """``fn(x, t)`` followed by ``rules[parametrization](coefficients at t, x, fn(x, t))`` (identity for "score")."""
    if parametrization not in PARAMETRIZATIONS:
        raise InvalidArgument(f"parametrization: unknown {parametrization!r}; choose one of {PARAMETRIZATIONS}")

    def converted(x, t):
        t = jnp.asarray(t, dtype=x.dtype)
        out = fn(x, t)
        if parametrization == "score":
            return out
        return rules[parametrization](_coefficients(process, t, x), x, out)

    return converted


def score_from(model_fn: Callable, process, parametrization: str = "eps") -> Callable:
    """Wrap ``model_fn(x (N, *shape), t scalar or (N,)) -> prediction like x`` as ``score(x, t)``.

    Args:
      model_fn: the network (any pure function of x and t).
      process: the forward process the model was trained for (gives alpha, sigma, f, g2).
      parametrization: what the model predicts: "eps", "x0", "v" (velocity d/dt x_t) or "score".
    """
    return _convert(model_fn, process, parametrization, _TO_SCORE)


def score_to(score: Callable, process, parametrization: str) -> Callable:
    """The inverse conversion: express a score function as an eps / x0 / v / score predictor."""
    return _convert(score, process, parametrization, _FROM_SCORE)
