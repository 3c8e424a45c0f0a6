"""Bad input gets a clear error naming the argument, never a silent NaN."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import dgjax as dg

P = dg.VP()
GM = dg.random_mixture(jax.random.key(0), 2, (3,))
SCORE = GM.score(P)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match="score"):
        dg.sample(SCORE, P, jnp.zeros((4, 5)), steps=2)
    with pytest.raises(ValueError, match="score"):
        dg.sample(lambda x, t: x[:, :2], P, jnp.zeros((4, 3)), steps=2)
    with pytest.raises(ValueError, match="x_T"):
        dg.sample(SCORE, P, jnp.float32(1.0), steps=2)
    with pytest.raises(ValueError, match="logp_T"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), key=jax.random.key(0), track_logp=True, logp_T=jnp.zeros(3), steps=2)
    with pytest.raises(ValueError, match="drift"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), sampler=dg.ODE(lambda x, t, s: s[:, :1]), steps=2)
    with pytest.raises(ValueError, match="dtype"):
        dg.sample(lambda x, t: x.astype(jnp.float16), P, jnp.zeros((4, 3)), steps=2)


def test_time_outside_range():
    with pytest.raises(ValueError, match="t_start"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), t_start=1.5, steps=2)
    with pytest.raises(ValueError, match="t_end"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), t_end=-0.1, steps=2)
    with pytest.raises(ValueError, match="t_end"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), t_start=0.3, t_end=0.5, steps=2)


def test_non_finite_x_T_eager_and_under_jit():
    bad = jnp.zeros((4, 3)).at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match="x_T.*non-finite"):
        dg.sample(SCORE, P, bad, steps=2)
    f = jax.jit(lambda x: dg.sample(SCORE, P, x, steps=2).x)
    with pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError), match="x_T.*non-finite"):
        jax.block_until_ready(f(bad))
    with pytest.raises(ValueError, match="x0.*non-finite"):
        dg.log_likelihood(SCORE, P, jnp.full((2, 3), jnp.inf), divergence=dg.Exact(), steps=2)


def test_missing_key_for_hutchinson():
    with pytest.raises(ValueError, match="key"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), track_logp=True, steps=2)


def test_bad_sampler_and_params():
    with pytest.raises(ValueError, match="sampler"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), sampler="pf", steps=2)
    with pytest.raises(ValueError, match="num_probes"):
        dg.Hutchinson(num_probes=0)
    with pytest.raises(ValueError, match="parametrization"):
        dg.score_from(SCORE, P, "epsilon")
    with pytest.raises(ValueError, match="steps"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), steps=10, rtol=1e-3)
    with pytest.raises(ValueError, match="x_T.*floating"):
        dg.sample(SCORE, P, jnp.zeros((4, 3), jnp.int32), steps=2)
