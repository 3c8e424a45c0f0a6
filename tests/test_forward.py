"""Log-density along the forward SDE (docs/math.md 4(e)) and the SDE encoder, against the exact mixture log p."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

PROC = dg.VP()


def _track(steps, n, seed=2):
    mix = dg.random_mixture(jax.random.key(seed), 4, (16,), dtype=jnp.float64)
    lp = mix.log_prob(PROC)
    x = mix.sample(jax.random.key(10 + seed), n)
    tr = dg.forward_sde_logp(mix.score(PROC), PROC, x, key=jax.random.key(1), steps=steps, divergence=dg.Exact())
    r_T = lp(x, PROC.t_min) + tr.change
    return r_T, lp(tr.x_T, PROC.t_max), tr


@pytest.mark.slow  # the default suite checks the same tracking through the encoder (test_sde_encoder_tracks_exact_logp)
def test_forward_tracking_error_falls_with_steps(x64):
    rms = []
    for steps in (100, 400):
        r_T, exact, tr = _track(steps, 64)
        rms.append(float(jnp.sqrt(jnp.mean((r_T - exact) ** 2))))
        assert int(tr.nfe) == steps * 17  # score + D = 16 exact JVPs per step
    assert rms[1] < 0.75 * rms[0], rms  # strong order 1/2: about 1/2 per 4x steps


@pytest.mark.slow
def test_forward_tracking_correlation_at_4000_steps(x64):
    r_T, exact, _ = _track(4000, 256)
    assert np.corrcoef(r_T, exact)[0, 1] >= 0.97
    assert abs(float(jnp.mean(r_T - exact))) < 0.2


def _encode(steps, n=64):
    @jax.jit  # one compiled program instead of many eager operations
    def run():
        mix = dg.random_mixture(jax.random.key(2), 4, (16,), dtype=jnp.float64)
        lp = mix.log_prob(PROC)
        x = mix.sample(jax.random.key(5), n)
        lik = dg.log_likelihood(mix.score(PROC), PROC, x, key=jax.random.key(2), encoder="sde", steps=steps,
                                divergence=dg.Exact(), prior_log_prob=lambda z: lp(z, PROC.t_max))
        return lik.logp, lp(x, PROC.t_min), lik.nfe

    return run()


def test_sde_encoder_tracks_exact_logp(x64):
    """The encoder is log p_T(x_T) - (r_T - r_0) of forward_sde_logp: its error falling with steps is the
    forward tracking's (docs/math.md 4(e))."""
    rms, corr = [], []
    for steps in (100, 400):
        logp, exact, nfe = _encode(steps)
        assert int(nfe) == steps * 17  # score + D = 16 exact JVPs per step
        rms.append(float(jnp.sqrt(jnp.mean((logp - exact) ** 2))))
        corr.append(np.corrcoef(logp, exact)[0, 1])
    assert rms[1] < 0.75 * rms[0] and corr[1] > corr[0] and corr[1] > 0.7, (rms, corr)


@pytest.mark.slow
def test_sde_encoder_at_4000_steps(x64):
    logp, exact, _ = _encode(4000, 256)
    assert np.corrcoef(logp, exact)[0, 1] >= 0.95


def test_forward_bad_input():
    mix = dg.random_mixture(jax.random.key(0), 2, (2,))
    with pytest.raises(ValueError, match="steps"):
        dg.forward_sde_logp(mix.score(PROC), PROC, jnp.zeros((2, 2)), key=jax.random.key(0), steps=0)
    with pytest.raises(ValueError, match="encoder"):
        dg.log_likelihood(mix.score(PROC), PROC, jnp.zeros((2, 2)), key=jax.random.key(0), encoder="vae")
    with pytest.raises(ValueError, match="steps"):
        dg.log_likelihood(mix.score(PROC), PROC, jnp.zeros((2, 2)), key=jax.random.key(0), encoder="sde")


def _gauss_var(t, v0=0.04):
    """Per-dimension variance of p_t for p_0 = N(m, v0 I) under PROC: alpha_t^2 v0 + sigma_t^2."""
    t = jnp.float32(t)
    return PROC.alpha(t) ** 2 * v0 + PROC.sigma(t) ** 2


def test_forward_sde_from_inside_the_interval_draws_fresh_increments():
    """Issue 24 item 1: from t_start = 0.4 to t_end = 0.7 (200 steps) the Brownian keys are laid out for the
    solve's own steps. x_{0.4} ~ p_{0.4} exactly, so x_T ~ p_{0.7}: its variance is alpha^2 v0 + sigma^2, and
    the tracked change has the exact mean E log p_{0.7} - E log p_{0.4} = -(D/2) log(v_{0.7} / v_{0.4}) (each
    within 5 standard errors). Keys laid out for [0, t_end] (steps sharing keys) gave variance 2.4 and mean
    change -3.43 against -1.85."""
    mix = dg.GaussianMixture(jnp.ones(1), jnp.array([[0.5, -1.0]]), jnp.array([0.04]))
    ts, te, n = 0.4, 0.7, 4000
    x = mix.sample_t(jax.random.key(1), n, PROC, ts)
    tr = (lambda x: dg.forward_sde_logp(mix.score(PROC), PROC, x, key=jax.random.key(2), steps=200,
                                               t_start=ts, t_end=te, divergence=dg.Exact()))(x)
    var = float(_gauss_var(te))
    np.testing.assert_allclose(np.var(tr.x_T, axis=0), var, rtol=5 * np.sqrt(2.0 / n))
    exact_change = -float(jnp.log(_gauss_var(te) / _gauss_var(ts)))  # D = 2: -(2/2) log(v_te / v_ts)
    assert abs(float(jnp.mean(tr.change)) - exact_change) < 5 * float(jnp.std(tr.change)) / np.sqrt(n)
