"""The ELBO (docs/math.md 10) against the oracle: exact score + exact prior = exact log p_{t_min} up to Monte-Carlo
error; with the standard prior the difference is the prior mismatch; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

PROC = dg.VP()


def _setup():
    mix = dg.random_mixture(jax.random.key(3), 3, (8,), dtype=jnp.float64)
    x = mix.sample(jax.random.key(0), 16)
    lp_T = lambda z: mix.log_prob(PROC)(z, PROC.t_max)  # noqa: E731
    return mix, x, lp_T


@pytest.fixture(scope="module")
def exact_prior():
    """The ELBO with the exact score and exact p_T (computed once, shared by the two tests below)."""
    with jax.enable_x64(True):
        mix, x, lp_T = _setup()
        r = jax.jit(lambda k: dg.elbo(mix.score(PROC), PROC, x, key=k, num_samples=400, prior_log_prob=lp_T))(
            jax.random.key(1))  # one compiled program instead of many eager operations
        yield mix, x, lp_T, r


def test_elbo_with_exact_score_and_prior_is_exact_logp(x64, exact_prior):
    mix, x, lp_T, r = exact_prior
    exact = mix.log_prob(PROC)(x, PROC.t_min)
    z = (r.elbo - exact) / r.stderr
    assert bool(jnp.all(jnp.abs(z) < 3.5)), z  # each point (16 of them) within 3.5 standard errors
    mean_se = float(jnp.sqrt(jnp.sum(r.stderr**2))) / x.shape[0]
    assert abs(float(jnp.mean(r.elbo - exact))) < 3 * mean_se
    assert int(r.nfe) == 800


def test_elbo_standard_prior_difference_is_prior_mismatch(x64, exact_prior):
    mix, x, lp_T, exact = exact_prior
    score, key = mix.score(PROC), jax.random.key(1)
    m = 400
    std_prior = jax.jit(lambda k: dg.elbo(score, PROC, x, key=k, num_samples=m))(key)  # same draws: integrals cancel
    diff = std_prior.elbo - exact.elbo
    # independent: E[log N(x_T; 0, sigma_T^2) - log p_T(x_T)], x_T | x ~ N(a x, v I), large Monte Carlo
    t0, t1 = PROC.t_min, PROC.t_max
    a = float(PROC.alpha(t1) / PROC.alpha(t0))
    v = float(PROC.sigma(t1) ** 2 - a**2 * PROC.sigma(t0) ** 2)

    @jax.jit
    def prior_terms():
        eps = jax.random.normal(jax.random.key(7), (4000,) + x.shape, jnp.float64)
        x_T = a * x[None] + np.sqrt(v) * eps
        return jax.vmap(lp_T)(x_T), jax.vmap(PROC.prior_log_prob)(x_T)

    lpt, lpn = prior_terms()
    mismatch = jnp.mean(lpn - lpt, axis=0)
    # the ELBO's own prior term averages m antithetic draws: its error is below std(log p_T) / sqrt(m)
    se = jnp.std(lpt, axis=0) / np.sqrt(m) + jnp.std(lpt, axis=0) / np.sqrt(4000)
    assert bool(jnp.all(jnp.abs(diff - mismatch) < 3 * se)), (diff, mismatch, se)


@pytest.mark.parametrize("kw, match", [(dict(num_samples=0), "num_samples"), (dict(num_samples=2.5), "num_samples"),
                                       (dict(key=None), "key")])
def test_elbo_bad_input(kw, match):
    mix = dg.random_mixture(jax.random.key(0), 2, (2,))
    args = dict(key=jax.random.key(0), num_samples=4) | kw
    with pytest.raises(ValueError, match=match):
        dg.elbo(mix.score(PROC), PROC, jnp.zeros((2, 2)), **args)


def test_time_of_log_snr_inverts(x64):
    for proc in (dg.VP(), dg.VPCosine(), dg.EDM()):
        t = jnp.linspace(proc.t_min + 1e-3, proc.t_max - 1e-3, 7)
        np.testing.assert_allclose(proc.time_of_log_snr(proc.log_snr(t)), t, atol=1e-9)


@pytest.mark.parametrize("process", [dg.VP(), dg.VE(), dg.EDM(), dg.LinearFlow()], ids=lambda p: type(p).__name__)
def test_log_snr_draws_keep_the_kernel_variance_positive(process):
    """The lowest stratum at M = 1e7 (u ~ 1e-7) put lambda on lambda(t_min) in float32: v = 0 and the Stein term
    0/0 (a NonFiniteError blaming the score). The draws stay where v > 0 and still cover the whole range."""
    from dgjax.elbo import log_snr_draws, log_snr_of_uniform

    lam = log_snr_of_uniform(process, jnp.asarray([0.0, 1e-12, 1e-9, 1e-7], jnp.float32))
    t = process.time_of_log_snr(lam)
    _, v, _ = process.transition(jnp.float32(process.t_min), t)
    assert bool(jnp.all(v > 0)), (lam, t, v)
    lam_hi = float(process.log_snr(jnp.float32(process.t_min)))
    assert float(jnp.max(lam_hi - lam)) < 1e-3 * max(1.0, abs(lam_hi))  # the strip left out is thin
    lam = log_snr_draws(process, jax.random.key(0), 100, 3, jnp.float32, True)  # one draw per stratum
    lam_lo = float(process.log_snr(jnp.float32(process.t_max)))
    strata = np.floor((lam_hi - np.asarray(lam)) / (lam_hi - lam_lo) * 100)
    np.testing.assert_array_equal(strata, np.repeat(np.arange(100)[:, None], 3, axis=1))
