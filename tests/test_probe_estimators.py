"""Divergence estimators with lower variance at equal cost (issue 25, item 2): per-step probes under constant
steps (StepwiseHutchinson, the default there) and orthogonal probe sets, against the exact trace and the
exact-divergence log-likelihood."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg


@pytest.mark.parametrize("est", [dg.StepwiseHutchinson(), dg.StepwiseHutchinson(2, "gaussian"),
                                 dg.OrthogonalHutchinson(3)])
def test_estimators_are_unbiased_for_a_dense_matrix(est):
    d = 24
    a = jax.random.normal(jax.random.key(0), (d, d))
    x = jnp.zeros((20000, d))
    tr = est.trace(lambda z: z @ a.T, x, est.draw(jax.random.key(1), x))
    assert abs(float(jnp.mean(tr) - jnp.trace(a))) < 3 * float(jnp.std(tr)) / np.sqrt(x.shape[0])
    assert est.num_jvps(d) == est.num_probes


def test_stepwise_probes_change_per_step_and_are_orthogonal():
    est = dg.StepwiseHutchinson()
    x = jnp.zeros((3, 16))
    steps = jnp.stack([est.draw_step(jax.random.key(0), x, jnp.int32(k))[0] for k in range(16)])  # (16, 3, 16)
    gram = jnp.einsum("knd,lnd->nkl", steps, steps)
    np.testing.assert_allclose(gram, jnp.broadcast_to(16 * jnp.eye(16), gram.shape))  # a full orthogonal cycle
    assert set(np.unique(np.asarray(steps))) == {-1.0, 1.0}


@pytest.fixture(scope="module")
def mixture():
    return dg.random_mixture(jax.random.key(0), 4, (16,), mean_scale=1.0, var_range=(0.02, 0.3))


def _dense_gaussian(d: int):
    """A zero-mean Gaussian with a dense covariance U diag(lam) U^T: its score's Jacobian is dense and smooth
    along the whole path, the case probe redrawing is for. Returns (score, exact log p_0)."""
    u, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (d, d)))
    lam = jnp.linspace(0.05, 2.0, d)
    p = dg.VP()

    def score(x, t):
        c = p.alpha(t) ** 2 * lam + p.sigma(t) ** 2
        return -((x @ u) / c) @ u.T

    def log_p0(x):
        c = p.alpha(p.t_min) ** 2 * lam + p.sigma(p.t_min) ** 2
        z = x @ u
        return -0.5 * jnp.sum(z * z / c + jnp.log(2 * jnp.pi * c), axis=-1)

    return p, score, log_p0


def test_stepwise_default_lowers_the_spread_at_equal_nfe():
    """Constant steps: the default (StepwiseHutchinson) is unbiased (against the exact log p) and its spread over
    probe keys is at most half that of one fixed Rademacher probe, at equal NFE (dense Gaussian, D = 32)."""
    p, score, log_p0 = _dense_gaussian(32)
    x0 = jax.random.normal(jax.random.key(1), (2, 32))
    x = jnp.repeat(x0, 64, axis=0)  # 2 samples x 64 probe keys
    exact = np.asarray(log_p0(x0))
    fixed = dg.log_likelihood(score, p, x, key=jax.random.key(2), divergence=dg.Hutchinson(), steps=24)
    default = dg.log_likelihood(score, p, x, key=jax.random.key(2), steps=24)
    assert int(default.nfe) == int(fixed.nfe)
    sd = {}
    for name, out in (("fixed", fixed), ("default", default)):
        v = np.asarray(out.logp).reshape(2, 64)
        se = v.std(axis=1, ddof=1) / 8
        assert np.all(np.abs(v.mean(axis=1) - exact) < 3 * se + 0.02), name  # 0.02: prior mismatch, solver
        sd[name] = np.sqrt(np.mean(v.var(axis=1, ddof=1)))
    assert sd["default"] < 0.5 * sd["fixed"], sd


def test_stepwise_needs_constant_steps(mixture):
    p = dg.VP()
    x = mixture.sample(jax.random.key(1), 2)
    with pytest.raises(dg.InvalidArgument, match="constant step"):
        dg.log_likelihood(mixture.score(p), p, x, key=jax.random.key(0), divergence=dg.StepwiseHutchinson(),
                          rtol=1e-3, atol=1e-3)
    # with a grid of times the probes follow the grid's steps
    out = dg.log_likelihood(mixture.score(p), p, x, key=jax.random.key(0), divergence=dg.StepwiseHutchinson(),
                            steps=8, grid="log_snr")
    assert np.all(np.isfinite(np.asarray(out.logp)))


@pytest.mark.parametrize("est, solver, steps", [
    (None, None, 32), (None, "heun", 96), (dg.OrthogonalHutchinson(2), None, 32), (dg.StepwiseHutchinson(2), None, 32)],
    ids=["default-tsit5", "default-heun", "orthogonal", "stepwise2"])
def test_estimators_match_the_oracle_log_likelihood(mixture, est, solver, steps):
    """Gaussian-mixture oracle (D = 16): the PF-ODE log-likelihood with each estimator (None: the default of
    dg.log_likelihood under constant steps, StepwiseHutchinson()) is unbiased: over 32 probe keys its mean
    agrees within 3 standard errors with the exact-divergence solve on the same steps (the same x path, so the
    expectation over probes is that solve's result), and with the exact log p_0 up to that solve's own error."""
    p = dg.VP()
    solver = dfx.Heun() if solver == "heun" else None
    x0 = mixture.sample(jax.random.key(5), 2)
    exact = np.asarray(mixture.log_prob(p)(x0, p.t_min))
    ref = np.asarray(dg.log_likelihood(mixture.score(p), p, x0, divergence=dg.Exact(), solver=solver,
                                       steps=steps).logp)
    x = jnp.repeat(x0, 32, axis=0)
    v = np.asarray(dg.log_likelihood(mixture.score(p), p, x, key=jax.random.key(6), divergence=est, solver=solver,
                                     steps=steps).logp).reshape(2, 32)
    se = v.std(axis=1, ddof=1) / np.sqrt(32)
    assert np.all(np.abs(v.mean(axis=1) - ref) < 3 * se + 1e-3), (v.mean(axis=1), ref, se)
    assert np.all(np.abs(v.mean(axis=1) - exact) < 3 * se + np.abs(ref - exact) + 1e-3), (v.mean(axis=1), exact, se)


def test_draw_index_gives_a_step_its_draws_after_its_first_stage():
    """grids.draw_index: with one draw per step the stages at c in (0, 1] of step k take draw k + 1 and the
    stage at c = 0 draw k, so Tsit5's stage at c = 1 (weight 2.32) shares its step's draw and a time point
    keeps one draw; with two, the stages split at c = 1/2 (uniform steps and a grid of times, either
    direction)."""
    from dgjax import grids

    c = np.array([0.0, 0.161, 0.327, 0.9, 0.98, 1.0])  # Tsit5's stage times
    for t0, t1 in ((0.0, 1.0), (1.0, 0.0)):
        for plan in (8, np.linspace(t0, t1, 9) ** 1.5):
            ts = np.linspace(t0, t1, 9) if isinstance(plan, int) else plan
            for k in range(8):
                t = jnp.asarray(ts[k] + c * (ts[k + 1] - ts[k]), jnp.float32)
                np.testing.assert_array_equal(grids.draw_index(t, t0, t1, plan), [k] + [k + 1] * 5)
                np.testing.assert_array_equal(grids.draw_index(t, t0, t1, plan, 2), [2 * k] + [2 * k + 1] * 2
                                              + [2 * k + 2] * 3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_draws_per_step_is_checked(bad):
    with pytest.raises(dg.InvalidArgument):
        dg.StepwiseHutchinson(draws_per_step=bad)


def test_scrambled_hadamard_steps_decorrelate_structured_pairs():
    """StepwiseHutchinson's probe order: consecutive draws' errors v_k^T M v_k - tr M are uncorrelated over keys
    also for a matrix whose entries all sit at one index difference with no low bits (i XOR j = 8: the
    vertical neighbours of an 8 x 8 image), where Hadamard rows taken in turn (Hutchinson.draw_step's
    default order) agree on (i, j) unless the row index carries into bit 3: correlation 1 - 2/8."""
    d, keys = 64, 4000
    m = np.zeros((d, d))
    i = np.arange(d)
    m[i, i ^ 8] = 1.0
    x = jnp.zeros((1, d))

    def corr(draw_step):
        def errors(key):
            v = jnp.stack([draw_step(key, x, jnp.int32(k))[0, 0] for k in range(2)])  # (2, D)
            return jnp.einsum("ki,ij,kj->k", v, m, v)

        e = np.asarray(jax.vmap(errors)(jax.random.split(jax.random.key(0), keys)))
        return np.corrcoef(e[:, 0], e[:, 1])[0, 1]

    tol = 4 / np.sqrt(keys)
    assert abs(corr(dg.StepwiseHutchinson().draw_step)) < tol
    assert abs(corr(dg.Hutchinson().draw_step) - 0.75) < tol
