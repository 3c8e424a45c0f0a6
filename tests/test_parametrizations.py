"""Parametrizations (docs/math.md 2): eps / x0 / v / score predictions convert to the same score for any process."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg


@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
def test_round_trip_through_each_parametrization(process, param, x64):
    gm = dg.random_mixture(jax.random.key(0), 3, (2, 2), dtype=jnp.float64)
    score = gm.score(process)
    t = process.t_min + 0.3 * (process.t_max - process.t_min)
    x = gm.sample_t(jax.random.key(1), 5, process, t)
    model = dg.score_to(score, process, param)
    back = dg.score_from(model, process, param)
    np.testing.assert_allclose(back(x, t), score(x, t), rtol=1e-9, atol=1e-9)
    ts = jnp.full((5,), t)  # per-sample times broadcast the same way
    np.testing.assert_allclose(back(x, ts), score(x, t), rtol=1e-9, atol=1e-9)


def test_velocity_formula_of_math2(process, x64):
    """v = alpha' x0 + sigma' eps from the exact posterior-mean x0 and eps: score_from(..., 'v') recovers s,
    with alpha', sigma' taken by finite differences (independent of the closed form used in the code)."""
    gm = dg.random_mixture(jax.random.key(2), 2, (3,), dtype=jnp.float64)
    score = gm.score(process)
    t = process.t_min + 0.4 * (process.t_max - process.t_min)
    x = gm.sample_t(jax.random.key(3), 4, process, t)
    h = 1e-6 * (process.t_max - process.t_min)
    a, s = process.alpha(t), process.sigma(t)
    da = (process.alpha(t + h) - process.alpha(t - h)) / (2 * h)
    ds = (process.sigma(t + h) - process.sigma(t - h)) / (2 * h)
    sc = score(x, t)
    eps = -s * sc
    x0 = (x - s * eps) / a
    v = da * x0 + ds * eps
    np.testing.assert_allclose(dg.score_from(lambda xx, tt: v, process, "v")(x, t), sc, rtol=1e-6, atol=1e-6)
    # and docs/math.md 2's eps_hat formula
    eps_hat = (a * v - da * x) / (a * ds - da * s)
    np.testing.assert_allclose(eps_hat, eps, rtol=1e-6, atol=1e-6)


def test_unknown_parametrization():
    with pytest.raises(ValueError, match="parametrization"):
        dg.score_from(lambda x, t: x, dg.VP(), "noise")
