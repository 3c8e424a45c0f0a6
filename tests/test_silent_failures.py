"""No silent wrong answer from a bad score or prior (issue 24 items 3-5): the posterior mean, the ELBO,
typicality and the likelihood encoders refuse a mis-shaped or low-precision score value or prior
(``dg.InvalidArgument``) and stop at a NaN or inf one (``dg.NonFiniteError``, naming the stage), where they
used to broadcast into a finite wrong result or return NaN / -inf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

PROC = dg.VP()
N, D = 3, 2
MIX = dg.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.5], [1.0, 0.0]]), jnp.array([0.1, 0.2]))
X = MIX.sample(jax.random.key(0), N)


def _nan_score(x, t):
    return jnp.full_like(x, jnp.nan)


@pytest.mark.parametrize("bad, err", [
    (lambda x, t: jnp.sum(x, axis=-1, keepdims=True), dg.InvalidArgument),  # (N, 1): broadcast into (N, D)
    (lambda x, t: x[0], dg.InvalidArgument),  # (D,)
    (lambda x, t: x.astype(jnp.float16), dg.InvalidArgument),
    (_nan_score, dg.NonFiniteError),
], ids=["N1", "D", "float16", "nan"])
def test_posterior_mean_checks_the_score_value(bad, err):
    with pytest.raises(err, match="score"):
        dg.posterior_mean(bad, PROC, X, 0.5)
    with pytest.raises(err, match="score"):
        dg.denoise(bad, PROC, X, 0.5, method="mean")


def test_posterior_mean_nan_score_under_jit():
    with pytest.raises(Exception) as info:
        jax.block_until_ready(jax.jit(lambda x: dg.posterior_mean(_nan_score, PROC, x, 0.5))(X))
    assert isinstance(dg.errors.classify(info.value), dg.NonFiniteError), info.value


@pytest.mark.parametrize("score, prior, stage", [
    (_nan_score, None, "score term"),
    (lambda x, t: jnp.full_like(x, jnp.inf), None, "score term"),
    (MIX.score(PROC), lambda z: jnp.full(z.shape[0], jnp.nan), "prior term"),
    (MIX.score(PROC), lambda z: jnp.full(z.shape[0], -jnp.inf), "prior term"),
], ids=["nan-score", "inf-score", "nan-prior", "-inf-prior"])
def test_elbo_stops_at_a_non_finite_term(score, prior, stage):
    with pytest.raises(dg.NonFiniteError, match=stage):
        dg.elbo(score, PROC, X, key=jax.random.key(1), num_samples=4, prior_log_prob=prior)


def test_typicality_stops_at_a_nan_score():
    with pytest.raises(dg.NonFiniteError, match="typicality"):
        dg.typicality(_nan_score, PROC, X, 0.5, divergence=dg.Exact())


def _likelihood(encoder, prior):
    kw = dict(key=jax.random.key(2), steps=4, divergence=dg.Exact(), prior_log_prob=prior, encoder=encoder)
    return dg.log_likelihood(MIX.score(PROC), PROC, X, **kw)


@pytest.mark.parametrize("encoder", ["ode", "sde"])
def test_likelihood_stops_at_a_nan_prior(encoder):
    with pytest.raises(dg.NonFiniteError, match="prior term"):
        _likelihood(encoder, lambda z: jnp.full(z.shape[0], jnp.nan))


@pytest.mark.parametrize("encoder", ["ode", "sde"])
@pytest.mark.parametrize("prior", [lambda z: PROC.prior_log_prob(z)[:, None],
                                   lambda z: jnp.sum(PROC.prior_log_prob(z))], ids=["N1", "scalar"])
def test_likelihood_refuses_a_prior_of_another_shape(encoder, prior):
    """(N, 1) used to give log p of shape (N, N); a scalar was broadcast to every sample (encoder="sde")."""
    with pytest.raises(dg.InvalidArgument, match=rf"prior_log_prob.*\({N},\)"):
        _likelihood(encoder, prior)
    assert _likelihood(encoder, PROC.prior_log_prob).logp.shape == (N,)


def test_tracking_from_below_t_max_needs_logp_T():
    """Issue 24 (medium): from t_start < t_max the default start (the prior, p_{t_max}) is not p_{t_start}: the
    tracked log p was 2 nats off on the oracle. logp_T is required there; at t_start = t_max it is not."""
    x = MIX.sample_t(jax.random.key(3), N, PROC, 0.6)
    kw = dict(key=jax.random.key(4), steps=4, track_logp=True, divergence=dg.Exact(), t_start=0.6)
    with pytest.raises(dg.InvalidArgument, match="logp_T"):
        dg.sample(MIX.score(PROC), PROC, x, **kw)
    lp = MIX.log_prob(PROC)
    assert dg.sample(MIX.score(PROC), PROC, x, logp_T=lp(x, 0.6), **kw).logp.shape == (N,)
    kw["t_start"] = PROC.t_max
    assert dg.sample(MIX.score(PROC), PROC, x, **kw).logp.shape == (N,)


def test_cheap_argument_checks():
    """Issue 24 (low): arguments that were accepted (or refused with JAX's own message) are refused by name."""
    score, key = MIX.score(PROC), jax.random.key(5)
    with pytest.raises(dg.InvalidArgument, match="brownian"):
        dg.forward_sde_logp(score, PROC, X, key=key, steps=2, brownian="foo")
    for kw in (dict(cg_steps=True), dict(symmetrize="no"), dict(cg_tol=float("inf")), dict(lanczos_steps=True)):
        with pytest.raises(dg.InvalidArgument, match=next(iter(kw))):
            dg.ModeTracking(**kw)
    assert dg.ModeTracking(cg_steps=np.int64(3)).cg_steps == 3
    with pytest.raises(dg.InvalidArgument, match="sampler_kwargs"):
        dg.denoise(score, PROC, X, 0.5, method="hd", steps=2, sampler_kwargs=dict(cg_steps=3))
    for bad in (0, jax.random.split(key, 2)):
        with pytest.raises(dg.InvalidArgument, match="key"):
            dg.add_noise(PROC, X, 0.5, bad)
        with pytest.raises(dg.InvalidArgument, match="key"):
            dg.denoise(score, PROC, X, 0.5, method="sample", steps=2, key=bad)
        with pytest.raises(dg.InvalidArgument, match="key"):
            dg.elbo(score, PROC, X, key=bad, num_samples=2)
    with pytest.raises(dg.InvalidArgument, match="empty event"):
        dg.posterior_mean(score, PROC, jnp.zeros((2, 0)), 0.5)
