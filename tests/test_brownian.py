"""Brownian paths for fixed-step SDE solves (``dgjax/sampling/brownian.py``): the default ``"steps"`` path
against an independent Euler-Maruyama loop, its increments, and its errors."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg
from dgjax.sampling.brownian import brownian_path, step_path

P = dg.VP()


def _hand_reverse_sde(score, x_T, key, times):
    """Euler-Maruyama of (x, log p) by docs/math.md 4(c), written out step by step over ``times`` (t descending),
    with step i's increment sqrt(dtau) normal(split(k_bm, S)[i]) (the documented key layout)."""
    k_bm, _ = jax.random.split(key)
    keys = jax.random.split(k_bm, len(times) - 1)
    x, lp, d = x_T, jnp.zeros(x_T.shape[0]), x_T.shape[1]
    for i in range(len(times) - 1):
        t0, dtau = times[i], times[i] - times[i + 1]
        _, _, f, g2 = P.coefficients(jnp.float32(t0))
        s = score(x, t0)
        gdw = jnp.sqrt(g2) * jnp.sqrt(jnp.float32(dtau)) * jax.random.normal(keys[i], x.shape)
        lp = lp + (f * d + 0.5 * g2 * jnp.sum(s * s, -1)) * dtau + jnp.sum(s * gdw, -1)
        x = x + (g2 * s - f * x) * dtau + gdw
    return x, lp


@pytest.mark.parametrize("grid", ["t", P.t_min + (P.t_max - P.t_min) * np.linspace(0.0, 1.0, 25) ** 2],
                         ids=["uniform", "quadratic"])
def test_default_path_is_one_key_per_step_and_matches_a_hand_written_loop(grid):
    """The default (``auto`` -> ``steps``) reverse SDE equals an independent Euler-Maruyama loop drawing
    step i's noise from the i-th split key, on a uniform grid (index by division) and on a quadratic grid
    of times (index by search): every step reads its own key, none is repeated or skipped."""
    gm = dg.random_mixture(jax.random.key(0), 3, (16,), var_range=(0.05, 0.3))
    score = gm.score(P)
    x_T = P.prior_sample(jax.random.key(1), (8, 16))
    key, steps = jax.random.key(2), 24
    out = dg.sample(score, P, x_T, sampler=dg.ReverseSDE(), key=key, steps=steps, grid=grid, track_logp=True,
                    logp_T=jnp.zeros(8))
    times = dg.step_times(P, P.t_max, P.t_min, steps, grid)  # t descending, t_max first
    x_ref, lp_ref = _hand_reverse_sde(score, x_T, key, times)
    np.testing.assert_allclose(out.x, x_ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(out.logp, lp_ref, rtol=2e-4, atol=2e-2)
    # a path whose steps shared keys would differ from the loop by O(1): check the test can see that
    x_bad, _ = _hand_reverse_sde(score, x_T, jax.random.key(3), times)
    assert float(jnp.max(jnp.abs(out.x - x_bad))) > 0.1


GEOMETRIC = np.concatenate([[0.0], np.cumsum(np.geomspace(1e-4, 0.3, 40))])


@pytest.mark.parametrize("knots", [np.linspace(0.0, 2.0, 65), GEOMETRIC], ids=["uniform", "geometric"])
def test_step_path_increments_are_the_step_keys_normals(knots):
    """evaluate(tau_i, tau_{i+1}) = sqrt(tau_{i+1} - tau_i) normal(keys[i]) for every step, under jit with float32
    times as diffrax's constant-step controller makes them (t0 + (t1 - t0) k / S), and the standardised
    increments are N(0, 1) (mean and variance within 5 standard errors over 64 x 2048 draws)."""
    key = jax.random.key(7)
    path = step_path(key, (2048,), jnp.float32, knots)
    keys = jax.random.split(key, len(knots) - 1)
    s = len(knots) - 1
    k32 = (knots[0] + (knots[-1] - knots[0]) * np.arange(s + 1) / s).astype(np.float32) if np.allclose(
        np.diff(knots), np.diff(knots)[0]) else knots.astype(np.float32)
    ev = jax.jit(lambda a, b: path.evaluate(a, b))
    z = []
    for i in range(s):
        w = ev(k32[i], k32[i + 1])
        z.append(w / np.sqrt(k32[i + 1] - k32[i]))
        # equal up to the rounding of * sqrt(dtau) / sqrt(dtau); another step's key differs by O(1)
        np.testing.assert_allclose(z[-1], jax.random.normal(keys[i], (2048,)), rtol=1e-5, atol=1e-6,
                                   err_msg=f"step {i}")
    z = np.stack(z)
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / n)


def test_auto_picks_the_step_path_for_fixed_steps_and_the_tree_for_adaptive():
    key = jax.random.key(0)
    assert isinstance(brownian_path("auto", key, (2, 3), jnp.float32, 1.0, 10), dg.StepBrownianPath)
    assert isinstance(brownian_path("auto", key, (2, 3), jnp.float32, 1.0, None), dfx.VirtualBrownianTree)
    assert isinstance(brownian_path("unsafe", key, (2, 3), jnp.float32, 1.0, 10), dfx.UnsafeBrownianPath)
    with pytest.raises(ValueError, match="brownian: 'steps' Brownian paths need fixed steps"):
        brownian_path("steps", key, (2, 3), jnp.float32, 1.0, None)
    gm = dg.random_mixture(jax.random.key(3), 2, (4,))
    with pytest.raises(ValueError, match="brownian: 'steps'"):
        dg.sample(gm.score(P), P, P.prior_sample(key, (2, 4)), sampler=dg.ReverseSDE(scheme="stratonovich",
                  brownian="steps"), key=key, rtol=1e-3, atol=1e-3, track_logp=True)
    with pytest.raises(ValueError, match="Levy area"):
        step_path(key, (3,), jnp.float32, np.linspace(0, 1, 5)).evaluate(0.0, 0.25, use_levy=True)


def test_reverse_sde_between_interior_times_has_the_exact_marginal():
    """dg.sample with t_start/t_end inside the process's interval (issue 24 item 1's check for the reverse
    direction): from x ~ p_{0.7} to t = 0.4 in 200 steps the samples have p_{0.4}'s variance and the tracked
    log p (started at the exact log p_{0.7}) has the exact mean E log p_{0.4} (5 standard errors)."""
    v0, n, ts, te = 0.04, 4000, 0.7, 0.4
    mix = dg.GaussianMixture(jnp.ones(1), jnp.array([[0.5, -1.0]]), jnp.array([v0]))
    lp = mix.log_prob(P)
    x = mix.sample_t(jax.random.key(1), n, P, ts)
    out = (lambda x: dg.sample(mix.score(P), P, x, sampler=dg.ReverseSDE(), key=jax.random.key(2), steps=200,
                                      t_start=ts, t_end=te, grid="t", track_logp=True, divergence=dg.Exact(),
                                      logp_T=lp(x, ts)))(x)
    var = float(P.alpha(jnp.float32(te)) ** 2 * v0 + P.sigma(jnp.float32(te)) ** 2)
    np.testing.assert_allclose(np.var(out.x, axis=0), var, rtol=5 * np.sqrt(2.0 / n))
    exact_mean = -(np.log(2 * np.pi * var) + 1.0)  # E log N(m, var I_2) = -(2/2)(log(2 pi var) + 1)
    assert abs(float(jnp.mean(out.logp)) - exact_mean) < 5 * float(jnp.std(out.logp)) / np.sqrt(n)
