"""Divergence estimators: Exact equals the Jacobian trace; Hutchinson is unbiased and its variance falls as
1/num_probes (and matches the known single-probe variance)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

D = 6


def _linear_fn(a):
    return lambda x: x @ a.T  # per-sample x -> A x


@pytest.fixture
def matrix(x64):
    return jax.random.normal(jax.random.key(0), (D, D), dtype=jnp.float64)


def test_exact_is_jacobian_trace(x64):
    w = jax.random.normal(jax.random.key(1), (D, D), dtype=jnp.float64)

    def fn(x):  # a nonlinear per-sample map
        return jnp.tanh(x @ w) * x + jnp.sin(x)

    x = jax.random.normal(jax.random.key(2), (5, D), dtype=jnp.float64)
    y, tr = dg.Exact().value_and_traces(fn, x, None)
    ref = jnp.trace(jax.vmap(jax.jacfwd(lambda xi: fn(xi[None])[0]))(x), axis1=1, axis2=2)
    np.testing.assert_allclose(tr[0], ref, rtol=1e-12)
    np.testing.assert_allclose(y, fn(x))


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_and_variance(matrix, dist):
    a = matrix
    fn = _linear_fn(a)
    x = jnp.zeros((1, D))
    exact = float(jnp.trace(a))
    sym = 0.5 * (a + a.T)
    # single-probe variance: Gaussian 2 |A_sym|_F^2; Rademacher 2 (|A_sym|_F^2 - sum_i A_ii^2)
    var1 = 2 * float(jnp.sum(sym**2)) if dist == "gaussian" else 2 * float(jnp.sum(sym**2) - jnp.sum(jnp.diag(a) ** 2))

    def estimates(k, reps, key):
        est = dg.Hutchinson(num_probes=k, distribution=dist)
        keys = jax.random.split(key, reps)
        return jax.vmap(lambda kk: est.trace(fn, x, est.draw(kk, x))[0])(keys)

    e1 = estimates(1, 20000, jax.random.key(1))
    # unbiased: the mean over many probes is the exact trace (within 4 standard errors)
    assert abs(float(jnp.mean(e1)) - exact) < 4 * np.sqrt(var1 / e1.size)
    np.testing.assert_allclose(jnp.var(e1), var1, rtol=0.05)
    for k in (4, 16):
        ek = estimates(k, 20000, jax.random.key(k))
        np.testing.assert_allclose(jnp.var(ek) * k, var1, rtol=0.05)


def test_probes_fixed_per_sample_and_independent_of_batch():
    est = dg.Hutchinson(num_probes=3)
    x8 = jnp.zeros((8, 2, 2))
    p8 = est.draw(jax.random.key(5), x8)
    assert p8.shape == (3, 8, 2, 2)
    assert set(np.unique(np.asarray(p8)).tolist()) == {-1.0, 1.0}
    np.testing.assert_array_equal(p8, est.draw(jax.random.key(5), x8))
    assert not np.array_equal(p8, est.draw(jax.random.key(6), x8))
    # sample i's probes depend on (key, i), not on the batch size (split is prefix-stable under JAX's
    # default partitionable threefry)
    p4 = est.draw(jax.random.key(5), jnp.zeros((4, 2, 2)))
    np.testing.assert_array_equal(p4, p8[:, :4])


def test_num_jvps():
    assert dg.Exact().num_jvps(10) == 10
    assert dg.Hutchinson(num_probes=3).num_jvps(10) == 3


@pytest.mark.parametrize("kwargs,name", [(dict(num_probes=0), "num_probes"), (dict(num_probes=2.5), "num_probes"),
                                         (dict(distribution="uniform"), "distribution")])
def test_bad_hutchinson(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dg.Hutchinson(**kwargs)


def test_hutchinson_needs_key():
    with pytest.raises(ValueError, match="key"):
        dg.Hutchinson().draw(None, jnp.zeros((2, 3)))
