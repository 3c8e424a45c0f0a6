"""Denoising (MATH 9): posterior mean against the mixture's closed form, the mode-tracking ODE against
Newton's method on the denoising density, the HD-ODE as its Gaussian special case, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg
from dgjax.sampling.mode import denoising_coefficients

PROC = dg.VP()


def _mixture(d, key=3):
    if d == 2:
        return dg.GaussianMixture(jnp.array([0.3, 0.3, 0.4]), jnp.array([[-1.0, 0.5], [1.0, 0.2], [0.0, -1.0]]),
                                  jnp.array([[0.05, 0.1], [0.1, 0.05], [0.08, 0.08]]))
    return dg.random_mixture(jax.random.key(key), 3, (d,), dtype=jnp.float64)


@jax.jit
def newton_mode(mix, x_t, t, s, y0, iters=40):
    """Newton's method on log p_s(y) - |x_t - a y|^2 / (2 v), dense Hessian (independent of the ODE)."""
    a, v, _ = denoising_coefficients(PROC, jnp.asarray(t), jnp.asarray(s))
    sc = mix.score(PROC)

    def grad1(y, x):
        return sc(y[None], s)[0] + a * (x - a * y) / v

    def step(y, x):
        return y - jnp.linalg.solve(jax.jacfwd(grad1)(y, x), grad1(y, x))

    y = jax.lax.fori_loop(0, iters, lambda _, yy: jax.vmap(step)(yy, x_t), y0)
    top = jnp.linalg.eigvalsh(jax.vmap(jax.jacfwd(grad1))(y, x_t))[:, -1]
    return y, top


@pytest.mark.parametrize("d", [2, pytest.param(8, marks=pytest.mark.slow)])
def test_mode_tracking_follows_newton_mode(d, x64):
    mix = _mixture(d)
    score = mix.score(PROC)
    t = 0.55
    x_t = dg.add_noise(PROC, mix.sample(jax.random.key(0), 3), t, jax.random.key(1))
    worst_hd = 0.0

    @jax.jit  # one compilation for every t_end
    def both(s):
        kw = dict(t_end=s, divergence=dg.Exact(), rtol=1e-10, atol=1e-10)
        return (dg.denoise(score, PROC, x_t, t, method="mode", **kw).x,
                dg.denoise(score, PROC, x_t, t, method="hd", **kw).x)

    for s in (0.3, PROC.t_min):  # partway and at the end
        mode, hd = both(jnp.asarray(s))
        y, top = newton_mode(mix, x_t, t, s, mode)
        assert bool(jnp.all(top < 0)), "Newton's point must be a mode (negative-definite Hessian)"
        np.testing.assert_allclose(mode, y, atol=1e-6)
        worst_hd = max(worst_hd, float(jnp.max(jnp.linalg.norm(hd - y, axis=-1))))
    print(f"D={d}: HD-ODE distance from the mode (max over samples and s) = {worst_hd:.3g}")
    assert worst_hd > 1e-3  # the HD-ODE is only an approximation on mixtures


@pytest.mark.slow
def test_mode_tracking_equals_hd_on_a_gaussian(x64):
    mix = dg.GaussianMixture(jnp.array([1.0]), jnp.array([[0.3, -0.5, 1.0, 0.0]]), jnp.array([[0.05, 0.2, 0.1, 0.4]]))
    score = mix.score(PROC)
    t = 0.6
    x_t = dg.add_noise(PROC, mix.sample(jax.random.key(0), 4), t, jax.random.key(1))
    kw = dict(divergence=dg.Exact(), rtol=1e-10, atol=1e-10)
    mode = dg.denoise(score, PROC, x_t, t, method="mode", **kw)
    hd = dg.denoise(score, PROC, x_t, t, method="hd", **kw)
    np.testing.assert_allclose(mode.x, hd.x, atol=1e-9)
    y, _ = newton_mode(mix, x_t, t, PROC.t_min, mode.x)
    np.testing.assert_allclose(mode.x, y, atol=1e-6)


def test_mode_tracking_logp_and_nfe(x64):
    """log p tracked along the mode path (MATH 4(b)) equals the exact log p at the end; nfe = cost formula."""
    mix = _mixture(2)
    score, lp = mix.score(PROC), mix.log_prob(PROC)
    t = 0.5

    @jax.jit  # one compiled program
    def run():
        x_t = dg.add_noise(PROC, mix.sample(jax.random.key(2), 3), t, jax.random.key(3))
        out = dg.denoise(score, PROC, x_t, t, method="mode", t_end=0.1, track_logp=True, divergence=dg.Exact(),
                         steps=100, logp_t=lp(x_t, t))
        return out, lp(out.x, 0.1)

    out, exact = run()
    np.testing.assert_allclose(out.logp, exact, atol=1e-6)
    d, cg = 2, 2
    per_eval = 1 + d + (2 * d + cg + 1 + d)  # score, tracking's Lap, grad Lap, CG + residual, dense check
    assert int(out.nfe) == per_eval * (1 + 6 * 100)  # Tsit5: 7 stages, first same as last


def test_posterior_mean_is_closed_form(x64):
    t = 0.4

    @jax.jit  # one compiled program instead of many eager operations
    def run():
        mix = _mixture(8)
        x_t = dg.add_noise(PROC, mix.sample(jax.random.key(0), 5), t, jax.random.key(1))
        got = dg.posterior_mean(mix.score(PROC), PROC, x_t, t)
        return mix, x_t, got, dg.denoise(mix.score(PROC), PROC, x_t, t, method="mean", t_end=0.1).x

    mix, x_t, got, out_x = run()
    a, s = float(PROC.alpha(t)), float(PROC.sigma(t))
    mu, v, w = np.asarray(mix.means), np.asarray(mix.variances), np.exp(np.asarray(mix.log_weights))
    xt = np.asarray(x_t)[:, None, :]
    c = a**2 * v + s**2
    logn = -0.5 * np.sum(np.log(2 * np.pi * c) + (xt - a * mu) ** 2 / c, axis=-1) + np.log(w)
    r = np.exp(logn - logn.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    post = mu + a * v / c * (xt - a * mu)  # per-component E[x_0 | x_t]
    np.testing.assert_allclose(got, np.einsum("nk,nkd->nd", r, post), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out_x, float(PROC.alpha(0.1)) * got, rtol=1e-12)


def test_add_noise_moments():
    x0 = jnp.ones((20000, 2))
    xt = dg.add_noise(PROC, x0, 0.5, jax.random.key(0))
    np.testing.assert_allclose(jnp.mean(xt, 0), float(PROC.alpha(0.5)), atol=0.02)
    np.testing.assert_allclose(jnp.std(xt, 0), float(PROC.sigma(0.5)), rtol=0.03)


def test_bifurcation_is_reported(x64):
    """Symmetric two-component mixture, x_t at the midpoint: the mode at 0 turns into a saddle (pitchfork)."""
    mix = dg.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0], [1.0, 0.0]]), jnp.array([0.01, 0.01]))
    x_t = jnp.zeros((1, 2))
    with pytest.raises(Exception, match="bifurcates or vanishes"):
        jax.block_until_ready(dg.denoise(mix.score(PROC), PROC, x_t, 0.5, method="mode", divergence=dg.Exact(),
                                         steps=50).x)


@pytest.mark.parametrize("kw, match", [
    (dict(method="median"), "method"),
    (dict(t_end=0.6), "t_end"),
    (dict(t_end=0.5), "t_end"),
    (dict(grid=[0.5, 0.1]), "grid"),
])
def test_bad_denoise_arguments(kw, match):
    mix = _mixture(2)
    x_t = jnp.zeros((2, 2))
    args = dict(method="mean") | kw
    with pytest.raises((ValueError, NotImplementedError), match=match):
        dg.denoise(mix.score(PROC), PROC, x_t, 0.5, **args)


def test_t_outside_range():
    mix = _mixture(2)
    with pytest.raises(ValueError, match="t must lie in"):
        dg.denoise(mix.score(PROC), PROC, jnp.zeros((2, 2)), 1.5)
    with pytest.raises(ValueError, match="t must lie in"):
        dg.add_noise(PROC, jnp.zeros((2, 2)), -0.1, jax.random.key(0))
