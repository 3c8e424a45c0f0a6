"""Step grids (dgjax.grids): accuracy of each process's default grid on the oracle, explicit grids through
diffrax StepTo, grids in every entry point and phase, and bad input."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

GRID_PROCESSES = [dg.VP(), dg.VPLinear(), dg.VPCosine(), dg.VE(), dg.EDM(), dg.LinearFlow(), dg.VPSDE(),
                  dg.VPSDE(1.0, 1.0, 10.0)]
# the bounds (nats per dimension, Heun x64, exact divergence, D = 64)
BOUND = {"VE": 0.02, "EDM": 0.02}


@pytest.mark.parametrize("process", GRID_PROCESSES, ids=lambda p: f"{type(p).__name__}-{p.t_max:g}")
def test_default_grid_heun64_error(process, x64):
    gm = dg.random_mixture(jax.random.key(0), 4, (64,), dtype=jnp.float64)
    lp = gm.log_prob(process)
    x_T = process.prior_sample(jax.random.key(1), (4, 64))
    out = dg.sample(gm.score(process), process, x_T, track_logp=True, logp_T=lp(x_T, process.t_max),
                    divergence=dg.Exact(), solver=dfx.Heun(), steps=64)
    err = float(jnp.mean(jnp.abs(out.logp - lp(out.x, process.t_min)))) / 64
    assert err <= BOUND.get(type(process).__name__, 2e-3), (process.default_grid, err)
    assert int(out.num_steps) == 64


def test_grid_times_are_uniform_in_their_coordinate(x64):
    p = dg.VPLinear()
    ts = dg.step_times(p, p.t_max, p.t_min, 10, "log_snr")
    lam = np.asarray(p.log_snr(jnp.asarray(ts)))
    np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 10, rtol=1e-8)
    assert ts[0] == p.t_max and ts[-1] == p.t_min
    e = dg.EDM()
    ts = dg.step_times(e, e.t_max, e.t_min, 18, "edm")  # Karras et al. eq. 5 with sigma = t
    i = np.arange(19)
    ref = (80.0 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(ts, ref, rtol=1e-9)
    np.testing.assert_allclose(dg.step_times(e, e.t_min, e.t_max, 18, "edm"), ref[::-1], rtol=1e-9)


def test_explicit_uniform_grid_equals_constant_steps(x64):
    """StepTo on np.linspace == diffrax's ConstantStepSize (two independent step-size paths)."""
    p = dg.EDM()
    gm = dg.random_mixture(jax.random.key(2), 3, (5,), dtype=jnp.float64)
    x_T = p.prior_sample(jax.random.key(3), (6, 5))
    kw = dict(track_logp=True, divergence=dg.Exact(), solver=dfx.Heun())
    a = dg.sample(gm.score(p), p, x_T, steps=20, grid="t", **kw)
    b = dg.sample(gm.score(p), p, x_T, grid=np.linspace(p.t_max, p.t_min, 21), **kw)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.logp, b.logp, rtol=1e-10)
    assert int(a.nfe) == int(b.nfe)


@pytest.mark.slow  # the default suite reaches grids in log_likelihood through tests/test_galaxies.py (log_snr)
def test_grid_in_likelihood(x64):
    p = dg.EDM()
    gm = dg.random_mixture(jax.random.key(4), 3, (4,), dtype=jnp.float64)
    score, lp = gm.score(p), gm.log_prob(p)
    x0 = gm.sample(jax.random.key(5), 8)
    ll_t = dg.log_likelihood(score, p, x0, divergence=dg.Exact(), solver=dfx.Heun(), steps=32, grid="t",
                             prior_log_prob=lambda z: lp(z, p.t_max))
    ll_e = dg.log_likelihood(score, p, x0, divergence=dg.Exact(), solver=dfx.Heun(), steps=32, grid="edm",
                             prior_log_prob=lambda z: lp(z, p.t_max))
    exact = lp(x0, p.t_min)
    assert float(jnp.mean(jnp.abs(ll_e.logp - exact))) < float(jnp.mean(jnp.abs(ll_t.logp - exact)))


def test_grids_in_sde_and_phases(x64):
    p = dg.EDM()
    gm = dg.random_mixture(jax.random.key(4), 3, (4,), dtype=jnp.float64)
    score = gm.score(p)
    x_T = p.prior_sample(jax.random.key(6), (8, 4))
    hd = dg.sample(score, p, x_T, sampler=dg.HighDensity(5.0), solver=dfx.Heun(), steps=16, grid="edm")
    ts = dg.step_times(p, p.t_max, p.t_min, 16, "edm")
    assert int(hd.num_steps) == 16 + int(not np.any(ts == 5.0))  # the switch time is added to the one grid
    sde = dg.sample(score, p, x_T, sampler=dg.ReverseSDE(), key=jax.random.key(7), steps=32, grid="edm")
    assert int(sde.num_steps) == 32 and bool(jnp.all(jnp.isfinite(sde.x)))


def test_vpsde_and_custom_process_match_closed_forms(x64):
    t = jnp.linspace(0.01, 1.0, 7)
    for a, b in zip(dg.VPSDE(0.1, 20.0, 1.0).coefficients(t), dg.VPLinear().coefficients(t), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    t = jnp.linspace(0.01, 10.0, 7)
    gal = dg.CustomProcess(lambda t: -0.5 * t, lambda t: 0.5 * jnp.log(-jnp.expm1(-t)), t_min=1e-3, t_max=10.0)
    for p in (gal, dg.VPSDE(1.0, 1.0, 10.0)):  # beta = 1: f = -1/2, g^2 = 1, alpha = e^{-t/2}
        alpha, sigma, f, g2 = p.coefficients(t)
        np.testing.assert_allclose(alpha, np.exp(-t / 2), rtol=1e-12)
        np.testing.assert_allclose(sigma**2, 1 - np.exp(-t), rtol=1e-12)
        np.testing.assert_allclose(f, -0.5, rtol=1e-12)
        np.testing.assert_allclose(g2, 1.0, rtol=1e-10)
    # T scales time: beta(t) = beta_min + (beta_max - beta_min) t / T
    np.testing.assert_allclose(dg.VPSDE(0.1, 20.0, 2.0).g2(jnp.array([1.0])), 0.1 + 19.9 * 0.5, rtol=1e-10)


def test_grid_bad_input():
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 2, (3,))
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="strictly monotone"):
        dg.sample(gm.score(p), p, x, grid=np.array([1.0, 0.3, 0.5, 0.0]))
    with pytest.raises(ValueError, match="leave"):
        dg.sample(gm.score(p), p, x, grid=np.array([1.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="run from"):
        dg.sample(gm.score(p), p, x, grid=np.array([0.9, 0.5, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        dg.sample(gm.score(p), p, x, grid=np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="1-D array"):
        dg.sample(gm.score(p), p, x, grid=np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="not both"):
        dg.sample(gm.score(p), p, x, steps=4, grid="t", rtol=1e-3)
    with pytest.raises(ValueError, match="needs steps"):
        dg.score_alignment(gm.score(p), p, x, 0.5, grid="edm")
    with pytest.raises(ValueError, match="needs steps"):
        dg.sample(gm.score(p), p, x, grid="edm")
    with pytest.raises(ValueError, match="unknown grid"):
        dg.log_likelihood(gm.score(p), p, x, steps=4, grid="karras")
    with pytest.raises(ValueError, match="makes 2 steps"):
        dg.sample(gm.score(p), p, x, steps=4, grid=np.array([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="log_sigma"):
        dg.CustomProcess(lambda t: -t, lambda t: -t, 0.0, 1.0)  # constant log-SNR
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda ts: dg.sample(gm.score(p), p, x, sampler=dg.HighDensity(ts), steps=4, grid="edm"))(0.5)
    # distinct in float64, one time in float32: refused before diffrax, naming the precision and the fix
    with pytest.raises(dg.InvalidArgument, match="coincide in float32"):
        dg.sample(gm.score(p), p, x, grid=np.array([p.t_max, 0.5 + 1e-9, 0.5, p.t_min]))
    with pytest.raises(dg.InvalidArgument, match="must be concrete"):
        jax.jit(lambda g: dg.sample(gm.score(p), p, x, grid=g).x)(jnp.asarray([p.t_max, 0.5, p.t_min]))


@pytest.mark.slow
def test_grid_in_alignment(x64):
    p = dg.EDM()
    gm = dg.random_mixture(jax.random.key(4), 3, (4,), dtype=jnp.float64)
    x_T = p.prior_sample(jax.random.key(6), (8, 4))
    ref = dg.score_alignment(gm.score(p), p, x_T, 1.0, rtol=1e-8, atol=1e-8)
    al = dg.score_alignment(gm.score(p), p, x_T, 1.0, solver=dfx.Heun(), steps=64, grid="edm", return_details=True)
    np.testing.assert_allclose(al.value, ref, rtol=2e-2, atol=1e-3)
    assert int(al.num_steps) == 64
