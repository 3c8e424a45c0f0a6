"""Processes (docs/math.md 1): coefficients agree with finite differences and closed forms; the forward SDE's
moments follow alpha and sigma; the prior is the stated Gaussian."""

import math

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from scipy import stats

import dgjax as dg


def _interior_times(p, n=7):
    lo, hi = p.t_min, p.t_max
    span = hi - lo
    return jnp.linspace(lo + 0.02 * span, hi - 0.02 * span, n)


def test_f_g2_match_finite_differences(process, x64):
    t = _interior_times(process)
    h = 1e-6 * (process.t_max - process.t_min)
    la = lambda tt: jnp.log(process.alpha(tt))  # noqa: E731
    s2 = lambda tt: process.sigma(tt) ** 2  # noqa: E731
    f_fd = (la(t + h) - la(t - h)) / (2 * h)
    ds2_fd = (s2(t + h) - s2(t - h)) / (2 * h)
    g2_fd = ds2_fd - 2 * f_fd * s2(t)
    np.testing.assert_allclose(process.f(t), f_fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(process.g2(t), g2_fd, rtol=1e-6, atol=1e-8)
    # g2 = -sigma^2 d lambda / dt, the other form of docs/math.md 1
    lam_fd = (process.log_snr(t + h) - process.log_snr(t - h)) / (2 * h)
    np.testing.assert_allclose(process.g2(t), -s2(t) * lam_fd, rtol=1e-6)
    assert jnp.all(process.g2(t) > 0)
    a, s, f, g2 = process.coefficients(t)
    for value, expected in ((a, process.alpha(t)), (s, process.sigma(t)), (f, process.f(t)), (g2, process.g2(t))):
        np.testing.assert_allclose(value, expected)


def test_closed_forms(x64):
    t = jnp.linspace(0.05, 0.95, 5)
    vp = dg.VP(-10.0, 10.0)
    lam = 10.0 - 20.0 * t
    np.testing.assert_allclose(vp.alpha(t) ** 2, jax.nn.sigmoid(lam), rtol=1e-12)
    np.testing.assert_allclose(vp.g2(t), 20.0 * jax.nn.sigmoid(-lam), rtol=1e-10)
    lin = dg.VPLinear(0.1, 20.0)
    beta = 0.1 + (20.0 - 0.1) * t
    np.testing.assert_allclose(lin.f(t), -0.5 * beta, rtol=1e-10)
    np.testing.assert_allclose(lin.g2(t), beta, rtol=1e-10)  # VP: g^2 = beta
    cos = dg.VPCosine()
    np.testing.assert_allclose(cos.alpha(t) ** 2 + cos.sigma(t) ** 2, 1.0, rtol=1e-12)
    ve = dg.VE(0.01, 50.0)
    np.testing.assert_allclose(ve.g2(t), 2 * ve.sigma(t) ** 2 * math.log(5000.0), rtol=1e-10)
    edm = dg.EDM()
    te = jnp.array([0.01, 1.0, 10.0, 79.0])
    np.testing.assert_allclose(edm.g2(te), 2 * te, rtol=1e-12)
    np.testing.assert_allclose(edm.f(te), 0.0, atol=1e-15)
    fl = dg.LinearFlow()
    np.testing.assert_allclose(fl.f(t), -1 / (1 - t), rtol=1e-12)
    np.testing.assert_allclose(fl.g2(t), 2 * t / (1 - t), rtol=1e-10)


def test_log_snr_decreasing_and_range(process):
    t = jnp.linspace(process.t_min, process.t_max, 50)
    lam = process.log_snr(t)
    assert jnp.all(jnp.isfinite(lam))
    assert jnp.all(jnp.diff(lam) < 0)
    assert process.t_min < process.t_max
    assert float(process.sigma(process.t_min)) > 0


def test_forward_sde_moments_follow_alpha_sigma(process, x64):
    """Mean and variance ODEs of dx = f x dt + g dW (m' = f m, V' = 2 f V + g^2), solved by diffrax from
    x_{t_min} ~ N(alpha_{t_min} x0, sigma_{t_min}^2), reproduce alpha_t x0 and sigma_t^2."""
    x0 = 0.7

    def vf(t, y, _):
        m, v = y
        return process.f(t) * m, 2 * process.f(t) * v + process.g2(t)

    ts = _interior_times(process, 5)
    y0 = (jnp.asarray(process.alpha(process.t_min) * x0), jnp.asarray(process.sigma(process.t_min) ** 2))
    sol = dfx.diffeqsolve(dfx.ODETerm(vf), dfx.Tsit5(), process.t_min, float(ts[-1]), None, y0,
                          saveat=dfx.SaveAt(ts=ts), stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12),
                          max_steps=100000)
    np.testing.assert_allclose(sol.ys[0], process.alpha(ts) * x0, rtol=1e-7)
    np.testing.assert_allclose(sol.ys[1], process.sigma(ts) ** 2, rtol=1e-7)


def test_forward_sde_monte_carlo_vp():
    """Euler-Maruyama paths of the forward SDE (diffrax) have the mean and std the process states."""
    p = dg.VP()
    n, x0, t1 = 20000, 1.5, 0.6
    key = jax.random.key(3)
    bm = dfx.VirtualBrownianTree(p.t_min, t1, tol=1e-3, shape=(n,), key=key)
    terms = dfx.MultiTerm(dfx.ODETerm(lambda t, y, _: p.f(t) * y),
                          dfx.ControlTerm(
                              lambda t, y, _: lx.DiagonalLinearOperator(jnp.sqrt(p.g2(t)) * jnp.ones_like(y)), bm))
    y0 = p.alpha(p.t_min) * x0 * jnp.ones(n)
    sol = dfx.diffeqsolve(terms, dfx.Heun(), p.t_min, t1, 1e-3, y0, saveat=dfx.SaveAt(t1=True))
    y = sol.ys[-1]
    se_mean = float(p.sigma(t1)) / math.sqrt(n)
    assert abs(float(jnp.mean(y)) - float(p.alpha(t1)) * x0) < 4 * se_mean + 5e-3
    assert abs(float(jnp.std(y)) / float(p.sigma(t1)) - 1) < 0.02


def test_prior(process, x64):
    key = jax.random.key(0)
    x = process.prior_sample(key, (4000, 3))
    assert x.shape == (4000, 3)
    np.testing.assert_allclose(jnp.std(x), process.sigma(process.t_max), rtol=0.03)
    lp = process.prior_log_prob(x[:5])
    ref = stats.norm(0, float(process.sigma(process.t_max))).logpdf(np.asarray(x[:5])).sum(axis=1)
    np.testing.assert_allclose(lp, ref, rtol=1e-10)


def test_processes_are_pytrees_under_jit(process):
    out = jax.jit(lambda p, t: p.sigma(t) * p.g2(t))(process, jnp.float32(0.5 * (process.t_min + process.t_max)))
    assert jnp.isfinite(out)


@pytest.mark.parametrize("ctor,kwargs,name", [
    (dg.VP, dict(lambda_min=5.0, lambda_max=-5.0), "lambda_min"),
    (dg.VE, dict(sigma_min=10.0, sigma_max=1.0), "sigma_min"),
    (dg.VPLinear, dict(t_min=0.0), "t_min"),
    (dg.LinearFlow, dict(eps=0.7), "eps"),
])
def test_bad_process_parameters(ctor, kwargs, name):
    with pytest.raises(ValueError, match=name):
        ctor(**kwargs)
