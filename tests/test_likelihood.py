"""log_likelihood (PF-ODE encoding, docs/math.md 4) against the exact log p_0, encode-decode round trips, and the
bits/dim convention."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg


def test_log_likelihood_exact_low_dim(process, x64):
    gm = dg.random_mixture(jax.random.key(0), 3, (2,), mean_scale=1.0, var_range=(0.02, 0.3), dtype=jnp.float64)
    x0 = gm.sample(jax.random.key(1), 16)
    lp = gm.log_prob(process)
    ll = dg.log_likelihood(gm.score(process), process, x0, divergence=dg.Exact(), rtol=1e-10, atol=1e-10,
                           prior_log_prob=lambda x: lp(x, process.t_max))
    assert float(jnp.max(jnp.abs(ll.logp - lp(x0, process.t_min)))) < 1e-4
    # encode then decode returns the input
    back = dg.sample(gm.score(process), process, ll.x_T, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(back.x, x0, atol=1e-6)


def test_log_likelihood_hutchinson_d1024():
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 4, (1024,), mean_scale=0.5, var_range=(0.01, 0.2))
    x0 = gm.sample(jax.random.key(1), 8)
    lp = gm.log_prob(p)
    ll = dg.log_likelihood(gm.score(p), p, x0, key=jax.random.key(2), rtol=1e-4, atol=1e-4,
                           prior_log_prob=lambda x: lp(x, p.t_max))
    assert float(jnp.mean(jnp.abs(ll.logp - lp(x0, p.t_min)))) / 1024 < 1e-3
    back = dg.sample(gm.score(p), p, ll.x_T, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(back.x - x0))) < 1e-2


def test_standard_prior_is_close_for_vp():
    """With the standard prior N(0, sigma_T^2) the error is the VP prior mismatch, which is small (alpha_T ~ 7e-3)."""
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 2, (16,), mean_scale=0.5)
    x0 = gm.sample(jax.random.key(1), 8)
    ll = dg.log_likelihood(gm.score(p), p, x0, divergence=dg.Exact(), rtol=1e-6, atol=1e-6)
    exact = gm.log_prob(p)(x0, p.t_min)
    mismatch = p.prior_log_prob(ll.x_T) - gm.log_prob(p)(ll.x_T, p.t_max)
    assert float(jnp.max(jnp.abs(mismatch))) < 0.05
    # the whole error is the prior term: the PF-ODE integral itself is exact
    np.testing.assert_allclose(ll.logp - exact, mismatch, atol=1e-3)


@pytest.mark.parametrize("offset,scale", [(7.0, "pm1"), (8.0, "unit")])
def test_bits_per_dim_convention(offset, scale):
    """Uniform 8-bit data, dequantised: x uniform on [-1, 1)^D (density 2^-D) or [0, 1)^D (density 1) -> exactly
    8 bits/dim, the entropy of a uniform byte."""
    d = 12
    logp = jnp.full((4,), -d * math.log(2.0)) if scale == "pm1" else jnp.zeros((4,))
    np.testing.assert_allclose(dg.bits_per_dim(logp, (3, 2, 2), offset), 8.0, rtol=1e-12)
    np.testing.assert_allclose(dg.bits_per_dim(logp[:3], d, offset), 8.0, rtol=1e-12)  # D as an int
    np.testing.assert_allclose(dg.bits_per_dim(logp[:3], (3, 2, 2), offset), 8.0, rtol=1e-12)  # N = shape[0]
    # and the transform itself: x = 2 (y + u) / 256 - 1 has Jacobian 1/128 per dimension
    y = jnp.arange(256.0)
    x = 2 * (y + 0.5) / 256 - 1
    assert float(jnp.min(x)) > -1 and float(jnp.max(x)) < 1
    np.testing.assert_allclose(jnp.diff(x), 2 / 256)


def test_likelihood_nfe_and_stderr():
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 2, (8,))
    x0 = gm.sample(jax.random.key(1), 4)
    ll = dg.log_likelihood(gm.score(p), p, x0, key=jax.random.key(2), divergence=dg.Hutchinson(3), steps=10)
    assert int(ll.nfe) == 4 * (1 + 6 * 10)
    assert ll.logp_stderr.shape == (4,) and jnp.all(ll.logp_stderr > 0)
