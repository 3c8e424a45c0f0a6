"""Drifts and their log-density rates (docs/math.md sections 3 and 4).

Everything here is a pure function of arrays. Shapes: x, s, u, v are (N, *shape); per-probe
Laplacian or divergence estimates are (P, N) (P = 1 for the exact trace, K for Hutchinson probes);
per-sample scalars are (N,). Coefficients (alpha, sigma, f, g2) come from ``process.coefficients(t)``
with scalar t inside a solve.

    PF-ODE drift           u = f x - 1/2 g^2 s                          (section 3)
    its divergence         div u = f D - 1/2 g^2 Lap                    (section 4)
    any ODE dx/dt = v:     d/dt log p_t(x_t) = -div u + s . (v - u)      (section 4(b); (a) when v = u)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._checks import batch_dot, bcast, event_dim


def pf_drift(coeffs, x, s):
    """u = f x - 1/2 g^2 s (docs/math.md 3)."""
    _, _, f, g2 = coeffs
    return bcast(f, x) * x - 0.5 * bcast(g2, x) * s


def hd_drift(coeffs, x, s):
    """HD-ODE drift f x - g^2 s (the reverse SDE's drift without its noise; docs/math.md 5)."""
    _, _, f, g2 = coeffs
    return bcast(f, x) * x - bcast(g2, x) * s


def pf_divergence(coeffs, lap, dim: int):
    """div u = f D - 1/2 g^2 Lap, for Laplacian estimates ``lap`` of any shape ((P, N) or (N,))."""
    _, _, f, g2 = coeffs
    return f * dim - 0.5 * g2 * lap


def logp_rate(div_u, s, v, u):
    """d/dt log p_t(x_t) = -div u + s . (v - u) (docs/math.md 4(b)); ``div_u`` (P, N) or (N,)."""
    return -div_u + batch_dot(s, v - u)


def score_and_laplacian(score: Callable, x, t, divergence, probes):
    """(s (N, *shape), Laplacian estimates (P, N)): one score evaluation plus the estimator's JVPs."""
    return divergence.value_and_traces(lambda z: score(z, t), x, probes)


def pf_velocity(coeffs, x, s, **_):
    """The probability-flow velocity (the ``velocity`` of the PF-ODE sampler)."""
    return pf_drift(coeffs, x, s)


def augmented_rate(score, process, x, t, divergence, probes, velocity):
    """The augmented vector field (dx/dt, d/dt log p per probe (P, N)) for an ODE sampler.

    ``velocity(coeffs, x, s, t=..., div_u=...) -> v``; div_u is the mean estimate (N,).
    """
    coeffs = process.coefficients_like(t, x)
    s, lap = score_and_laplacian(score, x, t, divergence, probes)
    div_u = pf_divergence(coeffs, lap, event_dim(x))
    u = pf_drift(coeffs, x, s)
    v = velocity(coeffs, x, s, t=t, div_u=jnp.mean(div_u, axis=0))
    return v, logp_rate(div_u, s, v, u)


def mean_and_stderr(per_probe: jax.Array):
    """Mean over the probe axis and its standard error (0 for a single row): (P, N) -> (N,), (N,)."""
    p = per_probe.shape[0]
    mean = jnp.mean(per_probe, axis=0)
    if p == 1:
        return mean, jnp.zeros_like(mean)
    return mean, jnp.std(per_probe, axis=0, ddof=1) / jnp.sqrt(p)
