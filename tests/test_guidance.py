"""Guidance on the ODE (issue 3; docs/math.md section 5), checked against the Gaussian-mixture oracle.

Every assertion compares with exact oracle values (log p_t, Laplacian, component variances) or with an
independent computation (finite differences, scipy's chi quantiles, an evaluation counter). Tests that
need float64 use the ``x64`` fixture of conftest.py, which enables it only for the duration of that test.
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import dgjax as dg
from dgjax import dynamics as dyn

QS = (0.1, 0.3, 0.5, 0.7, 0.9)
VP = dg.VP()


def zeros_rate(x, t):
    return jnp.zeros((x.shape[0],), x.dtype)


# ------------------------------------------------------------------------------------------------------
# density guidance: tracked log p, monotonicity in q, predicted shift
# ------------------------------------------------------------------------------------------------------
def test_dg_tracked_logp_matches_exact_in_3072_dims(x64):
    d, n = 3072, 4
    mix = dg.random_mixture(jax.random.key(0), 4, (d,), dtype=jnp.float64)
    score, logp = mix.score(VP), mix.log_prob(VP)
    x_T = VP.prior_sample(jax.random.key(1), (n, d))
    assert x_T.dtype == jnp.float64

    @jax.jit
    def run(q):
        return dg.sample(score, VP, x_T, sampler=dg.DensityGuidance(q), key=jax.random.key(2), track_logp=True,
                         divergence=dg.Hutchinson(16), logp_T=lambda x: logp(x, VP.t_max))

    exact, gains = [], []
    pf = dg.sample(score, VP, dg.DensityGuidance().prepare(VP, x_T))  # the q = 0.5 path, untracked
    for q in QS:
        out = run(jnp.asarray(q))
        ex = logp(out.x, VP.t_min)
        assert bool(jnp.all(jnp.isfinite(out.logp)))
        err = np.asarray(jnp.abs(out.logp - ex)) / d
        assert err.max() < 1e-3, (q, err)
        exact.append(np.asarray(ex))
        # relative to the median path, log p_0 moves by the predicted shift 1/2 (lam_max - lam_min) sqrt(2D) z
        shift = float(dg.DensityGuidance(q).log_density_shift(VP, d))
        assert shift == pytest.approx(10.0 * math.sqrt(2 * d) * stats.norm.ppf(q), rel=1e-9)
        gains.append(float(jnp.mean(ex - logp(pf.x, VP.t_min))) - shift)
    exact = np.stack(exact)  # (len(QS), n)
    # the exact log p_0 increases strictly with q, for every sample
    assert np.all(np.diff(exact, axis=0) > 0), exact / d
    # the realised shift matches the prescribed one to within 1e-3 nats per dimension
    assert np.max(np.abs(gains)) / d < 1e-3, gains


def test_dg_logp_rate_equals_known_rate():
    """docs/math.md 4(b) applied to the DG drift (what track_logp integrates) is the prescribed rate b."""
    d, n = 16, 5
    mix = dg.random_mixture(jax.random.key(3), 3, (d,))
    score, div_u = mix.score(VP), mix.div_pf_drift(VP)
    custom = lambda x_, t_: jnp.sum(x_, axis=-1) - 3.0  # noqa: E731

    @jax.jit
    def rates(x, t, q):
        (_, _, vel), = dg.DensityGuidance(q).phases(VP, VP.t_max, VP.t_min)
        (_, _, vel_c), = dg.DensityGuidance(rate=custom).phases(VP, VP.t_max, VP.t_min)
        return (dyn.augmented_rate(score, VP, x, t, dg.Exact(), None, vel)[1][0],
                dyn.augmented_rate(score, VP, x, t, dg.Exact(), None, vel_c)[1][0])

    for t in (0.9, 0.5, 0.1):
        x = mix.sample_t(jax.random.key(4), n, VP, t)
        _, sigma, _, g2 = VP.coefficients(jnp.asarray(t))
        exact_div = div_u(x, t)
        for q in (0.2, 0.8):
            rate_q, rate_c = rates(x, jnp.asarray(t), jnp.asarray(q))
            b_q = -exact_div - 0.5 * g2 * math.sqrt(2 * d) * stats.norm.ppf(q) / sigma**2
            np.testing.assert_allclose(rate_q, b_q, rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(rate_c, custom(x, t), rtol=1e-4, atol=1e-3)


def test_custom_rate_reproduces_integral_of_b(x64):
    """b = c (c = 0: log p held constant): exact log p_{t_min}(x) - log p_T(x_T) = -c (t_max - t_min)."""
    d, n = 16, 6
    mix = dg.random_mixture(jax.random.key(5), 3, (d,), dtype=jnp.float64)
    score, logp = mix.score(VP), mix.log_prob(VP)
    assert dg.DensityGuidance(rate=zeros_rate).needs_divergence and not dg.DensityGuidance(0.3).needs_divergence
    x_T = dg.DensityGuidance().prepare(VP, VP.prior_sample(jax.random.key(6), (n, d)))

    @jax.jit
    def run(c):
        sampler = dg.DensityGuidance(rate=lambda x, t: jnp.full((x.shape[0],), c, x.dtype))
        return dg.sample(score, VP, x_T, sampler=sampler, divergence=dg.Exact(), track_logp=True,
                         logp_T=lambda x: logp(x, VP.t_max), rtol=1e-7, atol=1e-7)

    for c in (0.0, 4.0, -6.0):
        out = run(jnp.asarray(c))
        change = logp(out.x, VP.t_min) - logp(x_T, VP.t_max)
        np.testing.assert_allclose(change, -c * (VP.t_max - VP.t_min), atol=1e-3)
        np.testing.assert_allclose(out.logp - out.logp_T, -c * (VP.t_max - VP.t_min), atol=1e-3)
    # the PF-ODE from the same latents raises log p far more than c could explain: b really held it
    pf = dg.sample(score, VP, x_T)
    assert float(jnp.min(logp(pf.x, VP.t_min) - logp(x_T, VP.t_max))) > 10.0


@pytest.mark.slow
def test_custom_rate_with_hutchinson_in_high_dim():
    """With Hutchinson div u the attained change equals the integral of b up to the estimator's error."""
    d, n = 3072, 4
    mix = dg.random_mixture(jax.random.key(7), 4, (d,))
    score, logp = mix.score(VP), mix.log_prob(VP)
    sampler = dg.DensityGuidance(rate=zeros_rate)
    x_T = sampler.prepare(VP, VP.prior_sample(jax.random.key(8), (n, d)))
    out = dg.sample(score, VP, x_T, sampler=sampler, key=jax.random.key(9), divergence=dg.Hutchinson(4))
    change = logp(out.x, VP.t_min) - logp(x_T, VP.t_max)
    assert float(jnp.max(jnp.abs(change))) / d < 1e-3, change


def test_q_half_without_median_start_is_the_pf_ode():
    d, n = 64, 4
    mix = dg.random_mixture(jax.random.key(10), 3, (d,))
    x_T = VP.prior_sample(jax.random.key(11), (n, d))
    a = dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(0.5, start_at_median=False), steps=30)
    b = dg.sample(mix.score(VP), VP, x_T, sampler=dg.PFODE(), steps=30)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-6, atol=1e-6)


def test_start_at_median_radius():
    d, n = 3072, 5
    x_T = VP.prior_sample(jax.random.key(12), (n, d))
    x = dg.DensityGuidance(0.3).prepare(VP, x_T)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), VP.sigma(1.0) * stats.chi.ppf(0.5, d), rtol=1e-5)
    cos = jnp.sum(x * x_T, -1) / (jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(x_T, axis=-1))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
    assert dg.DensityGuidance(0.3, start_at_median=False).prepare(VP, x_T) is x_T


# ------------------------------------------------------------------------------------------------------
# NFE
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [diffrax.Euler(), diffrax.Tsit5()])
def test_dg_costs_the_same_score_evaluations_as_pf(solver):
    d, n, steps = 16, 3, 12
    mix = dg.random_mixture(jax.random.key(13), 3, (d,))
    calls = []

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return mix.score(VP)(x, t)

    x_T = VP.prior_sample(jax.random.key(14), (n, d))
    counts, nfes = [], []
    for sampler in (dg.PFODE(), dg.DensityGuidance(0.53)):
        calls.clear()
        out = dg.sample(counting_score, VP, x_T, sampler=sampler, solver=solver, steps=steps)
        jax.block_until_ready(out.x)
        jax.effects_barrier()
        counts.append(len(calls))
        nfes.append(int(out.nfe))
    assert counts[0] == counts[1] > 0, counts
    assert nfes[0] == nfes[1] == counts[0], (nfes, counts)


# ------------------------------------------------------------------------------------------------------
# high-density sampler
# ------------------------------------------------------------------------------------------------------
def test_high_density_sampler_beats_pf_and_tracks_exactly(x64):
    d, n = 3072, 4
    mix = dg.random_mixture(jax.random.key(15), 4, (d,), dtype=jnp.float64)
    score, logp = mix.score(VP), mix.log_prob(VP)
    x_T = VP.prior_sample(jax.random.key(16), (n, d))
    means = []
    for sampler in (dg.PFODE(), dg.HighDensity(0.3), dg.HighDensity(0.7)):
        track = isinstance(sampler, dg.HighDensity)
        out = dg.sample(score, VP, x_T, sampler=sampler, key=jax.random.key(17), track_logp=track,
                        divergence=dg.Hutchinson(8), logp_T=lambda x: logp(x, VP.t_max), steps=40)
        ex = logp(out.x, VP.t_min)
        if track:
            assert float(jnp.max(jnp.abs(out.logp - ex))) / d < 1e-3, (sampler, out.logp - ex)
        means.append(float(jnp.mean(ex)))
    # earlier switch (larger t_switch: more of the path on the HD-ODE) -> higher exact log p_0
    assert means[0] < means[1] < means[2], means


def test_high_density_phases_and_hd_rate():
    """Phase layout, and the HD-ODE log-density rate -div u - 1/2 g^2 |s|^2 (docs/math.md 5, from 4(b))."""
    # always two phases (the same layout as a traced t_switch); one of zero length at the ends
    (t0, t1, v), (z0, z1, _) = dg.HighDensity(0.0).phases(VP, 1.0, 0.0)
    assert (t0, t1, v, z0, z1) == (1.0, 0.0, dyn.pf_velocity, 0.0, 0.0)
    (z0, z1, _), (t0, t1, hd) = dg.HighDensity(1.0).phases(VP, 1.0, 0.0)
    assert (z0, z1, t0, t1) == (1.0, 1.0, 1.0, 0.0) and hd is not dyn.pf_velocity
    (a0, a1, va), (b0, b1, vb) = dg.HighDensity(0.4).phases(VP, 1.0, 0.0)
    assert (a0, a1, b0, b1) == (1.0, 0.4, 0.4, 0.0) and va is dyn.pf_velocity
    d = 16
    mix = dg.random_mixture(jax.random.key(42), 3, (d,))
    x = mix.sample_t(jax.random.key(43), 5, VP, 0.3)
    s = mix.score(VP)(x, 0.3)
    coeffs = VP.coefficients(jnp.asarray(0.3))
    np.testing.assert_allclose(hd(coeffs, x, s), coeffs[2] * x - coeffs[3] * s, rtol=1e-6)
    _, rate = dyn.augmented_rate(mix.score(VP), VP, x, 0.3, dg.Exact(), None, vb)
    expected = -mix.div_pf_drift(VP)(x, 0.3) - 0.5 * coeffs[3] * jnp.sum(s * s, -1)
    np.testing.assert_allclose(rate[0], expected, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------
# prior guidance
# ------------------------------------------------------------------------------------------------------
def test_prior_guidance_radius_and_monotone_decoded_logp():
    d, n = 3072, 6
    mix = dg.random_mixture(jax.random.key(18), 4, (d,))
    score, logp = mix.score(VP), mix.log_prob(VP)
    x_T = VP.prior_sample(jax.random.key(19), (n, d))
    sigma_T = float(VP.sigma(VP.t_max))
    decode = jax.jit(lambda x: logp(dg.sample(score, VP, x, steps=40).x, VP.t_min))
    means = []
    for q in QS:
        x = dg.prior_guidance(VP, x_T, q)
        r = stats.chi.ppf(1 - q, d)
        np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), sigma_T * r, rtol=1e-5)
        np.testing.assert_allclose(jnp.sum(x * x_T, -1), jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(x_T, axis=-1),
                                   rtol=1e-5)  # same direction
        means.append(float(jnp.mean(decode(x))))
    assert np.all(np.diff(means) > 0), means  # q > 0.5: higher log-density (smoother)
    # per-sample q and a traced q (chi quantile solved in JAX) agree with scipy
    qv = jnp.asarray([0.05, 0.3, 0.5, 0.7, 0.95, 0.99])
    traced = jax.jit(lambda q: dg.prior_guidance(VP, x_T, q))(qv)
    np.testing.assert_allclose(jnp.linalg.norm(traced, axis=-1), sigma_T * stats.chi.ppf(1 - np.asarray(qv), d),
                               rtol=1e-4)


def test_prior_guidance_traced_radius_is_differentiable(x64):
    d = 50
    x_T = jnp.ones((1, d), jnp.float64)
    radius = lambda q: jnp.linalg.norm(dg.prior_guidance(VP, x_T, q))  # noqa: E731
    q = 0.3
    grad = jax.grad(radius)(jnp.asarray(q))
    h = 1e-5
    fd = (stats.chi.ppf(1 - q - h, d) - stats.chi.ppf(1 - q + h, d)) / (2 * h) * float(VP.sigma(1.0))
    assert float(grad) == pytest.approx(fd, rel=1e-5)


# ------------------------------------------------------------------------------------------------------
# typicality
# ------------------------------------------------------------------------------------------------------
def test_typicality_statistics_on_exact_samples():
    d, n, k = 3072, 1000, 4
    mix = dg.random_mixture(jax.random.key(20), k, (d,))
    score, lap = mix.score(VP), mix.laplacian(VP)
    w = np.exp(np.asarray(mix.log_weights, np.float64))
    v = np.asarray(mix.variances, np.float64)
    typ = jax.jit(lambda x, t, key: dg.typicality(score, VP, x, t, key=key))

    @jax.jit
    def exact_h_and_probe_sd(x, t):
        """h from the oracle's exact Laplacian, and a scale for the error of a Rademacher Hutchinson
        estimate of it. With H = B - diag(e), B = G M G^T of rank <= K (oracle.trace_hessian_sq), the
        Rademacher error is v^T B v - tr B = sum_k lam_k ((u_k.v)^2 - 1) (in high D), at most
        max_k |(u_k.v)^2 - 1| * sum_k |lam_k| <= max_k |(u_k.v)^2 - 1| * sqrt(K) |B|_F; returned: sqrt(K) |B|_F
        sigma^2 / sqrt(2D), the scale of h's error per unit of (u.v)^2."""
        sigma2 = VP.sigma(t) ** 2
        s = score(x, t)
        h = sigma2 * (lap(x, t) + jnp.sum(s * s, -1)) / math.sqrt(2 * d)
        c = VP.alpha(t) ** 2 * mix.variances + sigma2  # (K, D)
        g = -(x[:, None, :] - VP.alpha(t) * mix.means[None]) / c[None]  # (N, K, D)
        log_joint = mix.log_weights - 0.5 * jnp.sum(jnp.log(2 * jnp.pi * c) + g * g * c, -1)
        r = jax.nn.softmax(log_joint, -1)
        m = jax.vmap(jnp.diag)(r) - r[:, :, None] * r[:, None, :]
        ma = m @ jnp.einsum("nkd,njd->nkj", g, g)
        frob2 = jnp.einsum("nij,nji->n", ma, ma)
        return h, sigma2 * math.sqrt(k) * jnp.sqrt(jnp.maximum(frob2, 0.0)) / math.sqrt(2 * d)

    for i, t in enumerate((1.0, 0.75, 0.5, 0.3, 0.1)):
        x = mix.sample_t(jax.random.key(21 + i), n, VP, t)
        h = typ(x, jnp.asarray(t), jax.random.key(40 + i))
        h_exact, err_scale = exact_h_and_probe_sd(x, jnp.asarray(t))
        # (u.v)^2 ~ chi^2_1 exceeds 30 with probability 4e-8: a bound, not a fitted tolerance
        assert bool(jnp.all(jnp.abs(h - h_exact) <= 30 * err_scale + 1e-3)), (t, jnp.max(jnp.abs(h - h_exact)))
        diff = np.asarray(h - h_exact, np.float64)  # the estimate is unbiased
        assert abs(diff.mean()) <= 5 * diff.std() / math.sqrt(n) + 1e-4, (t, diff.mean())
        sigma2 = float(VP.sigma(t)) ** 2
        h = np.asarray(h, np.float64)
        se_mean = h.std() / math.sqrt(n)
        assert abs(h.mean()) < 0.1 and abs(h.mean()) < 5 * se_mean + 0.02, (t, h.mean())
        # predicted spread: std^2 = sum_k w_k mean_i (sigma^2 / c_ki)^2, c = alpha^2 v + sigma^2
        c = float(VP.alpha(t)) ** 2 * v + sigma2
        pred = math.sqrt(float(np.sum(w * np.mean((sigma2 / c) ** 2, axis=-1))))
        rel_se = 1 / math.sqrt(2 * n)  # standard error of a sample std, relative
        assert abs(h.std() / pred - 1) < 5 * rel_se, (t, h.std(), pred)
        if t >= 0.75:
            assert abs(h.std() - 1) < 0.15, (t, h.std())
    assert pred < 0.3  # at t = 0.1 the spread has shrunk well below 1, as docs/math.md 5 predicts


def test_typicality_input_checks():
    mix = dg.random_mixture(jax.random.key(22), 2, (8,))
    x = mix.sample(jax.random.key(23), 3)
    h = dg.typicality(mix.score(VP), VP, x, jnp.full((3,), 0.5), key=jax.random.key(0))
    assert h.shape == (3,)
    with pytest.raises(ValueError, match="t must lie in"):
        dg.typicality(mix.score(VP), VP, x, 1.5, divergence=dg.Exact())
    with pytest.raises(ValueError, match="key"):
        dg.typicality(mix.score(VP), VP, x, 0.5)


# ------------------------------------------------------------------------------------------------------
# gradients through the sampler
# ------------------------------------------------------------------------------------------------------
def _grad_setup(d=64, n=4):
    mix = dg.random_mixture(jax.random.key(24), 3, (d,), dtype=jnp.float64)
    x_T = VP.prior_sample(jax.random.key(25), (n, d))
    return mix, x_T


def test_grad_wrt_q_matches_finite_difference(x64):
    mix, x_T = _grad_setup()

    @jax.jit
    def objective(q):
        out = dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(q), steps=40)
        return jnp.mean(mix.log_prob(VP)(out.x, VP.t_min))

    grad = jax.jit(jax.grad(objective))
    for q in (0.4,):
        g = grad(jnp.asarray(q))
        h = 1e-4
        fd = (objective(q + h) - objective(q - h)) / (2 * h)
        assert bool(jnp.isfinite(g))
        assert float(g) == pytest.approx(float(fd), rel=0.02)
        assert float(g) > 0  # higher q, higher log p_0


def test_grad_wrt_latents_and_mixture_means(x64):
    mix, x_T = _grad_setup()
    direction_x = jax.random.normal(jax.random.key(26), x_T.shape)
    direction_mu = jax.random.normal(jax.random.key(27), mix.means.shape)

    def make_objective(sampler):
        @jax.jit
        def objective(x, means):
            m = eqx.tree_at(lambda mm: mm.means, mix, means)
            out = dg.sample(m.score(VP), VP, x, sampler=sampler, steps=40)
            return jnp.mean(m.log_prob(VP)(out.x, VP.t_min))
        return objective

    for sampler in (dg.DensityGuidance(0.55), dg.PFODE()):
        objective = make_objective(sampler)
        g_x, g_mu = jax.jit(jax.grad(objective, argnums=(0, 1)))(x_T, mix.means)
        assert bool(jnp.all(jnp.isfinite(g_x))) and bool(jnp.all(jnp.isfinite(g_mu)))
        h = 1e-5
        fd_x = (objective(x_T + h * direction_x, mix.means) - objective(x_T - h * direction_x, mix.means)) / (2 * h)
        fd_mu = (objective(x_T, mix.means + h * direction_mu) - objective(x_T, mix.means - h * direction_mu)) / (2 * h)
        assert float(jnp.sum(g_x * direction_x)) == pytest.approx(float(fd_x), rel=1e-4, abs=1e-6)
        assert float(jnp.sum(g_mu * direction_mu)) == pytest.approx(float(fd_mu), rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_grad_of_tracked_logp_wrt_q(x64):
    mix, x_T = _grad_setup(d=16)

    @jax.jit
    def objective(q):  # probes from a fixed key: a deterministic function of q
        out = dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(q), track_logp=True,
                        key=jax.random.key(0), divergence=dg.Hutchinson(2), steps=40)
        return jnp.mean(out.logp)

    g = jax.grad(objective)(jnp.asarray(0.4))
    fd = (objective(0.4 + 1e-4) - objective(0.4 - 1e-4)) / 2e-4
    assert float(g) == pytest.approx(float(fd), rel=0.02)


def test_q_is_a_pytree_leaf():
    s = dg.DensityGuidance(0.3)
    leaves = jax.tree_util.tree_leaves(s)
    assert len(leaves) == 1 and float(leaves[0]) == pytest.approx(0.3)
    # a sampler passed through jit as an argument keeps q traced (no recompilation per q)
    mix = dg.random_mixture(jax.random.key(28), 2, (8,))
    x_T = VP.prior_sample(jax.random.key(29), (3, 8))
    traces = []

    @eqx.filter_jit
    def run(smp):
        traces.append(1)
        return dg.sample(mix.score(VP), VP, x_T, sampler=smp, steps=10).x

    a, b = run(dg.DensityGuidance(0.45)), run(dg.DensityGuidance(0.55))
    assert len(traces) == 1
    assert not np.allclose(a, b)


# ------------------------------------------------------------------------------------------------------
# infeasible guidance
# ------------------------------------------------------------------------------------------------------
def test_infeasible_upward_guidance_is_reported():
    d = 2  # the shift 1/2 * 20 * sqrt(2D) * Phi^{-1}(0.9) = 25.6 nats far exceeds the D/2 = 1 head-room
    mix = dg.random_mixture(jax.random.key(30), 3, (d,))
    x_T = VP.prior_sample(jax.random.key(31), (8, d))
    sampler = dg.DensityGuidance(0.9)
    assert float(sampler.log_density_shift(VP, d)) > d / 2
    euler = dict(steps=100, solver=diffrax.Euler())
    for kw in (dict(), euler):  # adaptive (default) and fixed steps
        with pytest.raises(eqx.EquinoxRuntimeError, match="density guidance is infeasible"):
            jax.block_until_ready(dg.sample(mix.score(VP), VP, x_T, sampler=sampler, **kw).x)
    # under jax.jit the same message arrives wrapped in XLA's callback error
    with pytest.raises(Exception, match="density guidance is infeasible"):
        jax.block_until_ready(jax.jit(lambda x: dg.sample(mix.score(VP), VP, x, sampler=sampler, **euler).x)(x_T))
    # a custom rate pushing log p up faster than the head-room allows
    up = dg.DensityGuidance(rate=lambda x, t: jnp.full((x.shape[0],), -60.0, x.dtype))
    with pytest.raises(eqx.EquinoxRuntimeError, match="density guidance is infeasible"):
        jax.block_until_ready(dg.sample(mix.score(VP), VP, x_T, sampler=up, divergence=dg.Exact(), **euler).x)
    # with the check disabled the floor still keeps the result finite (never NaN)
    out = dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(0.9, feasibility_tol=0.0), **euler)
    assert bool(jnp.all(jnp.isfinite(out.x)))


def test_feasible_guidance_in_low_dim_is_not_flagged():
    """Within the head-room (shift < D/2) nothing is flagged and the tracked log p is exact."""
    d = 32
    mix = dg.random_mixture(jax.random.key(32), 3, (d,))
    logp = mix.log_prob(VP)
    x_T = VP.prior_sample(jax.random.key(33), (8, d))
    sampler = dg.DensityGuidance(0.55)
    assert float(sampler.log_density_shift(VP, d)) < d / 2
    out = dg.sample(mix.score(VP), VP, x_T, sampler=sampler, track_logp=True, divergence=dg.Exact(),
                    logp_T=lambda x: logp(x, VP.t_max), steps=100)
    np.testing.assert_allclose(out.logp, logp(out.x, VP.t_min), atol=0.05)
    ref = dg.sample(mix.score(VP), VP, sampler.prepare(VP, x_T))
    assert float(jnp.mean(logp(out.x, VP.t_min) - logp(ref.x, VP.t_min))) > 0


def test_zero_score_gives_finite_velocity():
    (_, _, vel), = dg.DensityGuidance(0.3).phases(VP, 1.0, 0.0)
    x = jnp.ones((2, 4))
    v = vel(VP.coefficients(jnp.asarray(0.5)), x, jnp.zeros_like(x), t=0.5)
    assert bool(jnp.all(jnp.isfinite(v)))
    (_, _, vel), = dg.DensityGuidance(rate=zeros_rate).phases(VP, 1.0, 0.0)
    v = vel(VP.coefficients(jnp.asarray(0.5)), x, jnp.zeros_like(x), t=0.5, div_u=jnp.ones(2))
    assert bool(jnp.all(jnp.isfinite(v)))


# ------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_q_outside_unit_interval_raises(q):
    with pytest.raises(ValueError, match=r"q must lie strictly inside \(0, 1\)"):
        dg.DensityGuidance(q)
    with pytest.raises(ValueError, match=r"q must lie strictly inside \(0, 1\)"):
        dg.prior_guidance(VP, jnp.ones((2, 3)), q)


def test_traced_q_outside_unit_interval_raises_at_run_time():
    mix = dg.random_mixture(jax.random.key(34), 2, (4,))
    x_T = VP.prior_sample(jax.random.key(35), (2, 4))
    run = jax.jit(lambda q: dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(q), steps=5).x)
    run(0.5)
    with pytest.raises(Exception, match=r"q must lie strictly inside \(0, 1\)"):
        jax.block_until_ready(run(1.2))


def test_bad_per_sample_q_shape():
    mix = dg.random_mixture(jax.random.key(36), 2, (4,))
    x_T = VP.prior_sample(jax.random.key(37), (3, 4))
    with pytest.raises(ValueError, match=r"per-sample q must have shape \(3,\)"):
        dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(jnp.asarray([0.3, 0.6])), steps=5)
    with pytest.raises(ValueError, match="scalar or a per-sample"):
        dg.DensityGuidance(jnp.full((2, 2), 0.3))
    # a per-sample q of the right shape works
    out = dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(jnp.asarray([0.3, 0.5, 0.51])), steps=5)
    assert out.x.shape == x_T.shape


@pytest.mark.parametrize("process,t_switch", [(dg.VP(), 1.5), (dg.VP(), -0.1), (dg.EDM(), 0.001), (dg.EDM(), 100.0)])
def test_t_switch_outside_process_range_raises(process, t_switch):
    mix = dg.random_mixture(jax.random.key(38), 2, (4,))
    x_T = process.prior_sample(jax.random.key(39), (2, 4))
    with pytest.raises(ValueError, match="t_switch must lie in"):
        dg.sample(mix.score(process), process, x_T, sampler=dg.HighDensity(t_switch), steps=5)


def test_t_switch_not_a_number_raises():
    with pytest.raises(ValueError, match="t_switch"):
        dg.HighDensity("0.5")
    with pytest.raises(ValueError, match="t_switch"):
        dg.HighDensity(float("nan"))


@pytest.mark.parametrize("bad_rate", [lambda x, t: jnp.float32(0.0), lambda x, t: jnp.zeros((x.shape[0], 1)),
                                      lambda x, t: jnp.zeros((x.shape[0] + 1,))])
def test_rate_with_wrong_shape_raises(bad_rate):
    mix = dg.random_mixture(jax.random.key(40), 2, (4,))
    x_T = VP.prior_sample(jax.random.key(41), (3, 4))
    with pytest.raises(ValueError, match=r"rate\(x, t\) must return one value per sample, shape \(3,\)"):
        dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(rate=bad_rate), divergence=dg.Exact(), steps=5)


def test_rate_not_callable_raises():
    with pytest.raises(ValueError, match="rate"):
        dg.DensityGuidance(rate=0.3)


def test_traced_chi_radius_matches_scipy_in_both_tails(x64):
    """The traced chi quantile (optimistix Newton) equals scipy's chi.ppf, far into both tails and in low
    and high dimension, and its gradient in p is 1 / pdf (implicit function theorem)."""
    from dgjax.sampling.guidance import _chi_ppf_jax

    def ppf_and_grad(dim):  # (the quantiles at p, the gradient at p[2])
        return jax.jit(lambda q: (_chi_ppf_jax(q, dim), jax.grad(lambda q0: _chi_ppf_jax(q0, dim))(q[2])))

    p = np.array([1e-6, 1e-4, 0.1, 0.5, 0.9, 0.9999, 1 - 1e-7])
    for dim in (3, 3072):
        r, g = ppf_and_grad(dim)(p)
        np.testing.assert_allclose(np.asarray(r), stats.chi.ppf(p, dim), rtol=1e-10)
        np.testing.assert_allclose(float(g), 1.0 / stats.chi.pdf(stats.chi.ppf(p[2], dim), dim), rtol=1e-8)
