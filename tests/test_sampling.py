"""PF-ODE and user-ODE sampling with the tracked log-density, against the exact oracle (docs/math.md 4(a), 4(b), 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg


def _mixture_2d(dtype):
    return dg.GaussianMixture(jnp.array([0.2, 0.3, 0.5], dtype),
                              jnp.array([[-1.5, 1.0], [1.5, 1.0], [0.0, -1.2]], dtype),
                              jnp.array([[0.05, 0.2], [0.2, 0.05], [0.1, 0.1]], dtype))


@pytest.mark.parametrize("dim", [1, 2])
def test_pfode_tracking_exact_low_dim(process, dim, x64):
    key = jax.random.key(dim)
    gm = dg.random_mixture(key, 3, (dim,), mean_scale=1.0, var_range=(0.02, 0.3), dtype=jnp.float64)
    lp = gm.log_prob(process)
    x_T = process.prior_sample(jax.random.key(10), (16, dim))
    out = dg.sample(gm.score(process), process, x_T, track_logp=True, divergence=dg.Exact(), rtol=1e-10, atol=1e-10,
                    logp_T=lp(x_T, process.t_max))
    err = jnp.abs(out.logp - lp(out.x, process.t_min))
    assert float(jnp.max(err)) < 1e-4, err
    assert out.logp.shape == (16,) and out.x.shape == (16, dim)
    np.testing.assert_array_equal(out.logp_stderr, 0.0)


def test_pfode_tracking_hutchinson_d1024(process):
    """D = 1024, one Rademacher probe per sample, adaptive Tsit5: mean |tracked - exact| / D < 1e-3."""
    gm = dg.random_mixture(jax.random.key(0), 4, (1024,), mean_scale=0.5, var_range=(0.01, 0.2))
    lp = gm.log_prob(process)
    x_T = process.prior_sample(jax.random.key(1), (8, 1024))
    out = dg.sample(gm.score(process), process, x_T, key=jax.random.key(2), track_logp=True, rtol=1e-4, atol=1e-4,
                    logp_T=lp(x_T, process.t_max))
    per_dim = float(jnp.mean(jnp.abs(out.logp - lp(out.x, process.t_min)))) / 1024
    assert per_dim < 1e-3, per_dim


def test_samples_land_on_the_data(x64):
    """PF-ODE from exact p_T samples gives samples of p_0: compare their mean with the mixture's."""
    p = dg.VP()
    gm = _mixture_2d(jnp.float64)
    x_T = gm.sample_t(jax.random.key(0), 4000, p, p.t_max)
    out = dg.sample(gm.score(p), p, x_T, rtol=1e-6, atol=1e-6)
    mean = jnp.sum(jnp.exp(gm.log_weights)[:, None] * gm.means, 0)
    np.testing.assert_allclose(jnp.mean(out.x, 0), mean, atol=0.05)


def test_multiple_probes_report_stderr():
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 3, (64,), mean_scale=0.5)
    lp = gm.log_prob(p)
    x_T = p.prior_sample(jax.random.key(1), (32, 64))
    out = dg.sample(gm.score(p), p, x_T, key=jax.random.key(2), track_logp=True,
                    divergence=dg.Hutchinson(num_probes=4, distribution="gaussian"), rtol=1e-5, atol=1e-5,
                    logp_T=lp(x_T, p.t_max))
    err = out.logp - lp(out.x, p.t_min)
    assert jnp.all(out.logp_stderr > 0)
    # the reported standard error describes the actual error: z-scores have roughly unit spread
    z = err / out.logp_stderr
    assert 0.3 < float(jnp.std(z)) < 2.5
    # K probes cost K JVPs per evaluation
    plain = dg.sample(gm.score(p), p, x_T, steps=10, solver=None)
    four = dg.sample(gm.score(p), p, x_T, key=jax.random.key(2), track_logp=True,
                     divergence=dg.Hutchinson(num_probes=4), steps=10)
    assert int(four.nfe) == 5 * int(plain.nfe)


def test_user_ode_tracking_exact(x64):
    """docs/math.md 4(b): along dx/dt = u + c(t) s + rotation, the tracked log p matches the exact log p."""
    p = dg.VP()
    gm = _mixture_2d(jnp.float64)
    lp = gm.log_prob(p)
    rot = jnp.array([[0.0, -1.0], [1.0, 0.0]])

    def drift(x, t, s):
        coeffs = p.coefficients(t)
        u = coeffs[2] * x - 0.5 * coeffs[3] * s
        return u + 0.3 * coeffs[3] * s + 0.5 * x @ rot.T

    x_T = p.prior_sample(jax.random.key(3), (16, 2))
    out = dg.sample(gm.score(p), p, x_T, sampler=dg.ODE(drift), track_logp=True, divergence=dg.Exact(),
                    rtol=1e-10, atol=1e-10, logp_T=lp(x_T, p.t_max))
    assert float(jnp.max(jnp.abs(out.logp - lp(out.x, p.t_min)))) < 1e-4
    # and the drift really moved the samples elsewhere than the PF-ODE
    pf = dg.sample(gm.score(p), p, x_T, rtol=1e-8, atol=1e-8)
    assert float(jnp.max(jnp.abs(pf.x - out.x))) > 0.1


def test_user_ode_with_pf_drift_equals_pfode(x64):
    p = dg.VE()
    gm = _mixture_2d(jnp.float64)

    def drift(x, t, s):
        _, _, f, g2 = p.coefficients(t)
        return f * x - 0.5 * g2 * s

    x_T = p.prior_sample(jax.random.key(4), (8, 2))
    a = dg.sample(gm.score(p), p, x_T, sampler=dg.ODE(drift), track_logp=True, divergence=dg.Exact(), steps=50)
    b = dg.sample(gm.score(p), p, x_T, track_logp=True, divergence=dg.Exact(), steps=50)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-12)
    np.testing.assert_allclose(a.logp, b.logp, rtol=1e-12)


def test_sample_under_jit_and_vmap():
    p = dg.VP()
    gm = _mixture_2d(jnp.float32)
    score = gm.score(p)
    f = jax.jit(lambda x, k: dg.sample(score, p, x, key=k, track_logp=True, steps=20))
    x_T = p.prior_sample(jax.random.key(0), (6, 2))
    out = f(x_T, jax.random.key(1))
    ref = dg.sample(score, p, x_T, key=jax.random.key(1), track_logp=True, steps=20)
    np.testing.assert_allclose(out.x, ref.x, rtol=1e-5)
    np.testing.assert_allclose(out.logp, ref.logp, rtol=1e-5)
    assert int(out.nfe) == int(ref.nfe) == 2 * (1 + 6 * 20)
    # vmap over independent groups of latents gives each group's own result
    xs = x_T.reshape(2, 3, 2)
    outs = jax.vmap(lambda x: dg.sample(score, p, x, steps=20).x)(xs)
    np.testing.assert_allclose(outs.reshape(6, 2), dg.sample(score, p, x_T, steps=20).x, rtol=1e-5, atol=1e-6)


def test_untracked_has_no_logp():
    p = dg.VP()
    gm = _mixture_2d(jnp.float32)
    out = dg.sample(gm.score(p), p, p.prior_sample(jax.random.key(0), (4, 2)), steps=5)
    assert out.logp is None and out.logp_T is None
    assert int(out.nfe) == 1 + 6 * 5 and int(out.num_steps) == 5


def test_float32_state_stays_float32_under_x64(x64):
    """With x64 on, float32 latents keep float32 (time is cast to the state's precision), probes included."""
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 2, (4,))
    x = p.prior_sample(jax.random.key(1), (3, 4)).astype(jnp.float32)
    for sampler in (dg.PFODE(), dg.ReverseSDE(scheme="stratonovich")):
        out = dg.sample(gm.score(p), p, x, sampler=sampler, key=jax.random.key(2), track_logp=True, steps=1000)
        assert out.x.dtype == out.logp.dtype == jnp.float32
        assert int(out.num_steps) == 1000
