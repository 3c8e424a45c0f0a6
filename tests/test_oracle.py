"""The Gaussian-mixture oracle (docs/math.md 8) against independent computations: scipy densities, autodiff
of its own log-density, and Monte Carlo moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import dgjax as dg


@pytest.fixture
def mixture64(x64):
    key = jax.random.key(7)
    return dg.random_mixture(key, 3, (2, 3), mean_scale=1.0, var_range=(0.02, 0.5), dtype=jnp.float64)


def test_log_prob_matches_scipy(process, mixture64):
    gm = mixture64
    t = 0.3 * process.t_min + 0.7 * (process.t_min + 0.1 * (process.t_max - process.t_min))
    x = process.prior_sample(jax.random.key(1), (5, 2, 3)) * 0.1 + 0.3
    a, s = float(process.alpha(t)), float(process.sigma(t))
    mu = np.asarray(gm.means).reshape(3, -1)
    var = np.asarray(gm.variances).reshape(3, -1)
    logw = np.asarray(gm.log_weights)
    xf = np.asarray(x).reshape(5, -1)
    comp = np.stack([stats.multivariate_normal(a * mu[k], np.diag(a**2 * var[k] + s**2)).logpdf(xf)
                     for k in range(3)], 1)
    ref = logsumexp(comp + logw, axis=1)
    np.testing.assert_allclose(gm.log_prob(process)(x, t), ref, rtol=1e-10)


def test_score_hessian_laplacian_match_autodiff(process, mixture64):
    gm = mixture64
    t = process.t_min + 0.2 * (process.t_max - process.t_min)
    x = gm.sample_t(jax.random.key(2), 4, process, t)
    v = jax.random.normal(jax.random.key(3), x.shape, dtype=x.dtype)
    a, s, f, g2 = process.coefficients(jnp.asarray(t))

    @jax.jit  # one compiled program per process (eagerly, the autodiff references took 15-25 s)
    def both(x, v):
        single = lambda xi: gm.log_prob(process)(xi[None], t)[0]  # noqa: E731
        grad = jax.vmap(jax.grad(single))(x)
        hess = jax.vmap(jax.hessian(single))(x).reshape(4, 6, 6)
        # div u = f D - 1/2 g^2 Lap equals the trace of the Jacobian of the PF drift
        u = lambda xi: f * xi - 0.5 * g2 * gm.score(process)(xi[None], t)[0]  # noqa: E731
        jac = jax.vmap(jax.jacfwd(u))(x).reshape(4, 6, 6)
        ours = (gm.score(process)(x, t), gm.hvp(process)(x, t, v), gm.laplacian(process)(x, t),
                gm.trace_hessian_sq(process)(x, t), gm.div_pf_drift(process)(x, t))
        return ours, (grad, hess, jac)

    (score, hvp, lap, tr_h2, div_u), (grad, hess, jac) = both(x, v)
    np.testing.assert_allclose(score, grad, rtol=1e-9, atol=1e-9)
    hv = jnp.einsum("nij,nj->ni", hess, v.reshape(4, 6)).reshape(x.shape)
    np.testing.assert_allclose(hvp, hv, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(lap, jnp.trace(hess, axis1=1, axis2=2), rtol=1e-9)
    np.testing.assert_allclose(tr_h2, jnp.sum(hess**2, axis=(1, 2)), rtol=1e-8)
    np.testing.assert_allclose(div_u, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-9)


def test_per_sample_times(mixture64):
    p = dg.VP()
    x = jax.random.normal(jax.random.key(0), (3, 2, 3), dtype=jnp.float64)
    ts = jnp.array([0.1, 0.5, 0.9])
    batched = mixture64.log_prob(p)(x, ts)
    single = jnp.stack([gm_lp_i for gm_lp_i in [mixture64.log_prob(p)(x[i:i + 1], ts[i])[0] for i in range(3)]])
    np.testing.assert_allclose(batched, single, rtol=1e-12)
    s_b = mixture64.score(p)(x, ts)
    s_1 = jnp.concatenate([mixture64.score(p)(x[i:i + 1], ts[i]) for i in range(3)])
    np.testing.assert_allclose(s_b, s_1, rtol=1e-12)


def test_stable_in_high_dimension():
    """D = 3072 in float32, points far from every component at t_min: finite, and equal to a float64 computation."""
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 5, (3, 32, 32), var_range=(1e-3, 0.1))
    x = 3.0 * jax.random.normal(jax.random.key(1), (4, 3, 32, 32))
    lp = gm.log_prob(p)(x, p.t_min)
    s = gm.score(p)(x, p.t_min)
    lap = gm.laplacian(p)(x, p.t_min)
    assert jnp.all(jnp.isfinite(lp)) and jnp.all(jnp.isfinite(s)) and jnp.all(jnp.isfinite(lap))
    with jax.enable_x64(True):
        gm64 = dg.GaussianMixture(jnp.exp(gm.log_weights.astype(jnp.float64)), gm.means.astype(jnp.float64),
                                  gm.variances.astype(jnp.float64))
        lp64 = gm64.log_prob(p)(x.astype(jnp.float64), p.t_min)
    np.testing.assert_allclose(lp, lp64, rtol=1e-5)


def test_sample_moments():
    w, mu, v = np.array([0.25, 0.75]), np.array([[-2.0, 0.0], [1.0, 1.0]]), np.array([[0.5, 0.1], [0.2, 0.3]])
    gm = dg.GaussianMixture(jnp.asarray(w), jnp.asarray(mu), jnp.asarray(v))
    x = gm.sample(jax.random.key(0), 40000)
    mean = (w[:, None] * mu).sum(0)
    var = (w[:, None] * (v + mu**2)).sum(0) - mean**2
    np.testing.assert_allclose(jnp.mean(x, 0), mean, atol=4 * np.sqrt(var / 40000).max())
    np.testing.assert_allclose(jnp.var(x, 0), var, rtol=0.03)
    p = dg.VP()
    xt = gm.sample_t(jax.random.key(1), 40000, p, 0.5)
    a, s = float(p.alpha(0.5)), float(p.sigma(0.5))
    np.testing.assert_allclose(jnp.var(xt, 0), a**2 * var + s**2, rtol=0.03)


def test_isotropic_variances_and_gradients_flow_to_means():
    gm = dg.GaussianMixture(jnp.array([1.0, 1.0]), jnp.zeros((2, 4)), jnp.array([0.1, 0.2]))
    assert gm.variances.shape == (2, 4)
    x = jnp.ones((3, 4))

    def loss(m):
        return jnp.sum(dg.GaussianMixture(jnp.array([1.0, 1.0]), m, jnp.array([0.1, 0.2])).log_prob(dg.VP())(x, 0.5))

    g = jax.grad(loss)(jnp.zeros((2, 4)))
    assert g.shape == (2, 4) and jnp.all(jnp.isfinite(g)) and jnp.any(g != 0)


@pytest.mark.parametrize("kwargs,name", [
    (dict(weights=jnp.ones((2, 1)), means=jnp.zeros((2, 3)), variances=jnp.ones(2)), "weights"),
    (dict(weights=jnp.ones(2), means=jnp.zeros((3, 3)), variances=jnp.ones(2)), "means"),
    (dict(weights=jnp.ones(2), means=jnp.zeros((2, 3)), variances=jnp.ones((2, 4))), "variances"),
    (dict(weights=jnp.ones(2), means=jnp.zeros((2, 3)), variances=-jnp.ones(2)), "variances"),
    (dict(weights=-jnp.ones(2), means=jnp.zeros((2, 3)), variances=jnp.ones(2)), "weights"),
])
def test_bad_mixture(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dg.GaussianMixture(**kwargs)


def test_wrong_event_shape():
    gm = dg.GaussianMixture(jnp.ones(2), jnp.zeros((2, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match="event shape"):
        gm.score(dg.VP())(jnp.zeros((4, 5)), 0.5)
