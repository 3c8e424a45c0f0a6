"""Denoising (docs/math.md 9): posterior mean against the mixture's closed form, the mode-tracking ODE against
Newton's method on the denoising density, the HD-ODE as its Gaussian special case, and clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

PROC = dg.VP()


def _mixture(d, key=3):
    if d == 2:
        return dg.GaussianMixture(jnp.array([0.3, 0.3, 0.4]), jnp.array([[-1.0, 0.5], [1.0, 0.2], [0.0, -1.0]]),
                                  jnp.array([[0.05, 0.1], [0.1, 0.05], [0.08, 0.08]]))
    return dg.random_mixture(jax.random.key(key), 3, (d,), dtype=jnp.float64)


@jax.jit
def newton_mode(mix, x_t, t, s, y0, iters=40):
    """Newton's method on log p_s(y) - |x_t - a y|^2 / (2 v), dense Hessian (independent of the ODE)."""
    a, v, _ = PROC.transition(jnp.asarray(s), jnp.asarray(t))
    sc = mix.score(PROC)

    def grad1(y, x):
        return sc(y[None], s)[0] + a * (x - a * y) / v

    def step(y, x):
        return y - jnp.linalg.solve(jax.jacfwd(grad1)(y, x), grad1(y, x))

    y = jax.lax.fori_loop(0, iters, lambda _, yy: jax.vmap(step)(yy, x_t), y0)
    top = jnp.linalg.eigvalsh(jax.vmap(jax.jacfwd(grad1))(y, x_t))[:, -1]
    return y, top


@pytest.mark.parametrize("d, solve", [(2, {}), pytest.param(8, {}, marks=pytest.mark.slow),
                                      pytest.param(2, dict(linear_solver="gmres"), marks=pytest.mark.slow),
                                      pytest.param(2, dict(symmetrize=True), marks=pytest.mark.slow)])
def test_mode_tracking_follows_newton_mode(d, solve, x64):
    """Also with GMRES and with the symmetrized CG (the learned-score options): on the exact score, whose
    Jacobian is symmetric, they follow the same mode."""
    mix = _mixture(d)
    score = mix.score(PROC)
    t = 0.55
    x_t = dg.add_noise(PROC, mix.sample(jax.random.key(0), 3), t, jax.random.key(1))
    worst_hd = 0.0

    @jax.jit  # one compilation for every t_end
    def both(s):
        kw = dict(t_end=s, divergence=dg.Exact(), rtol=1e-10, atol=1e-10)
        return (dg.denoise(score, PROC, x_t, t, method="mode", sampler_kwargs=solve, **kw).x,
                dg.denoise(score, PROC, x_t, t, method="hd", **kw).x)

    for s in (0.3, PROC.t_min):  # partway and at the end
        mode, hd = both(jnp.asarray(s))
        y, top = newton_mode(mix, x_t, t, s, mode)
        assert bool(jnp.all(top < 0)), "Newton's point must be a mode (negative-definite Hessian)"
        np.testing.assert_allclose(mode, y, atol=1e-6)
        print(f"D={d} {solve}: s={s}, max |mode - Newton| = {float(jnp.max(jnp.abs(mode - y))):.2g}")
        worst_hd = max(worst_hd, float(jnp.max(jnp.linalg.norm(hd - y, axis=-1))))
    print(f"D={d}: HD-ODE distance from the mode (max over samples and s) = {worst_hd:.3g}")
    assert worst_hd > 1e-3  # the HD-ODE is only an approximation on mixtures


def test_linear_solvers_agree_on_a_symmetric_jacobian(x64):
    """The exact score's Jacobian is symmetric: symmetrizing it, or solving with GMRES / BiCGStab instead of CG,
    must not change the mode (each within 1e-6 of Newton's mode, and of each other)."""
    mix = _mixture(2)
    score = mix.score(PROC)
    t, s = 0.55, 0.3
    x_t = dg.add_noise(PROC, mix.sample(jax.random.key(0), 3), t, jax.random.key(1))
    variants = {"cg": {}, "cg-sym": dict(symmetrize=True), "gmres": dict(linear_solver="gmres"),
                "bicgstab": dict(linear_solver="bicgstab", cg_steps=4)}

    @jax.jit  # one compiled program for the four solves
    def run():
        kw = dict(t_end=s, divergence=dg.Exact(), rtol=1e-10, atol=1e-10)
        return {k: dg.denoise(score, PROC, x_t, t, method="mode", sampler_kwargs=v, **kw).x
                for k, v in variants.items()}

    out = run()
    y, top = newton_mode(mix, x_t, t, s, out["cg"])
    assert bool(jnp.all(top < 0))
    for k, m in out.items():
        np.testing.assert_allclose(m, y, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(m, out["cg"], atol=1e-8, err_msg=k)


def test_bad_mode_tracking_options():
    with pytest.raises(ValueError, match="linear_solver"):
        dg.ModeTracking(linear_solver="lu")
    with pytest.raises(ValueError, match="cg_steps"):
        dg.ModeTracking(cg_steps=0)


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
    """log p tracked along the mode path (docs/math.md 4(b)) equals the exact log p at the end; nfe = cost formula."""
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


def _symmetric_mixture(d, dtype=jnp.float64):
    """Two equal components at -e_1 and +e_1 (variance 0.01): on the plane x_1 = 0 the mode of p(x_0 | x_t)
    splits (a pitchfork) with grad Lap = 0 there by symmetry, so z^T (I - cH) z cannot see it."""
    mu = jnp.zeros((2, d), dtype).at[0, 0].set(-1.0).at[1, 0].set(1.0)
    return dg.GaussianMixture(jnp.array([0.5, 0.5], dtype), mu, jnp.array([0.01, 0.01], dtype))


@pytest.mark.parametrize("d", [pytest.param(64, marks=pytest.mark.slow), 65, pytest.param(128, marks=pytest.mark.slow)])
def test_pitchfork_is_reported_at_any_dimension(d, x64):
    """Issue 24 item 2: the default check sees the bifurcation above D = 64 too (there it is the Lanczos
    estimate of H's top eigenvalue; before, "curvature" returned the saddle x_0 = 0 silently for D = 65, 128).
    The same compiled program off the plane (x_t drawn near +e_1) runs and follows Newton's mode."""
    mix = _symmetric_mixture(d)
    t = 0.5

    @eqx.filter_jit  # one program for both x_t (the mixture is an argument)
    def run(mix, x_t):
        return dg.denoise(mix.score(PROC), PROC, x_t, t, method="mode", divergence=dg.Exact(), rtol=1e-9,
                          atol=1e-9).x

    with pytest.raises(Exception) as info:
        jax.block_until_ready(run(mix, jnp.zeros((1, d))))
    assert isinstance(dg.errors.classify(info.value), dg.ModeBifurcation), info.value
    x0 = jnp.zeros((1, d)).at[0, 0].set(1.0) + 0.1 * jax.random.normal(jax.random.key(1), (1, d), jnp.float64)
    x_t = dg.add_noise(PROC, x0, t, jax.random.key(2))
    mode = run(mix, x_t)
    y, top = newton_mode(mix, x_t, t, PROC.t_min, mode)
    assert bool(jnp.all(top < 0))
    np.testing.assert_allclose(mode, y, atol=1e-6)
    assert float(mode[0, 0]) > 0.5  # the + mode, not the saddle


def test_improper_score_is_reported_by_the_curvature_check(x64):
    """s = +x/2 (an improper density): p(x_0 | x_t) has no mode once c > 2. check="curvature" ran off to
    |x| ~ 3000 from t = 0.9 (grad Lap = 0, so z = 0 and z^T (I - cH) z = 0); its fixed probe sees it now."""
    with pytest.raises(dg.ModeBifurcation):
        dg.denoise(lambda x, t: x / 2, PROC, jnp.ones((1, 2)), 0.9, method="mode", divergence=dg.Exact(), steps=50,
                   sampler_kwargs=dict(check="curvature"))


def test_bicgstab_in_float32_and_a_nan_score_named():
    """Issue 24 (medium): BiCGStab failed for every sample of a float32 D = 2 mixture (lineax's iterates once
    past convergence and breaks down, NaN) with an error blaming conjugate gradients; now it gives CG's mode.
    A NaN score is named as such (NonFiniteError), not as a failed linear solve."""
    mix = _mixture(2)
    x_t = dg.add_noise(PROC, mix.sample(jax.random.key(0), 3), 0.55, jax.random.key(1))

    @eqx.filter_jit  # one program for both solvers
    def run(x_t):
        kw = dict(method="mode", divergence=dg.Exact(), steps=20)
        return [dg.denoise(mix.score(PROC), PROC, x_t, 0.55, sampler_kwargs=dict(linear_solver=v), **kw).x
                for v in ("cg", "bicgstab")]

    cg, bicgstab = run(x_t)
    assert x_t.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(bicgstab)))
    np.testing.assert_allclose(bicgstab, cg, atol=1e-4)
    with pytest.raises(dg.NonFiniteError, match="grad Lap"):
        dg.denoise(lambda x, t: mix.score(PROC)(x, t) * jnp.nan, PROC, x_t, 0.55, method="mode",
                   divergence=dg.Exact(), steps=2, sampler_kwargs=dict(linear_solver="bicgstab"))


def test_failed_solve_names_its_solver(x64):
    from dgjax.sampling.mode import mode_correction

    mix = _mixture(8)
    x = mix.sample(jax.random.key(4), 2)
    field = lambda z: mix.score(PROC)(z, 0.2)  # noqa: E731
    lap = lambda z: jax.vmap(lambda zi: jnp.trace(jax.jacfwd(lambda u: field(u[None])[0])(zi)))(z)  # noqa: E731
    for solver, name in (("gmres", "GMRES"), ("bicgstab", "BiCGStab")):
        with pytest.raises(Exception) as info:  # one Krylov vector / iteration cannot solve an 8-dimensional system
            mode_correction(field, lap, x, 0.05, cg_steps=1, cg_tol=1e-12, check="curvature", linear_solver=solver)
        err = dg.errors.classify(info.value)
        assert isinstance(err, dg.LinearSolveFailed) and name in str(err) and "conjugate" not in str(err), err


def test_lanczos_top_eigenvalue(x64):
    """Against numpy's eigvalsh, D = 40: 10 steps on a spiked spectrum (what a mode's splitting looks like: one
    eigenvalue far above a bulk) give the top one to 1e-8."""
    d, steps = 40, 10
    from dgjax.sampling.mode import check_probe, lanczos_top_eigenvalue

    k1, k2 = jax.random.split(jax.random.key(3))
    q, _ = jnp.linalg.qr(jax.random.normal(k1, (d, d), jnp.float64))
    lam = (-jnp.exp(jax.random.uniform(k2, (d,), jnp.float64))).at[0].set(5.0)  # bulk in [-e, -1], spike 5
    a = (q * lam) @ q.T
    top = jax.jit(lambda a: lanczos_top_eigenvalue(lambda v: a @ v, check_probe((d,), jnp.float64), steps))(a)
    np.testing.assert_allclose(top, np.linalg.eigvalsh(np.asarray(a))[-1], rtol=1e-8)


@pytest.mark.parametrize("kw, match", [
    (dict(method="median"), "method"),
    (dict(t_end=0.6), "t_end"),
    (dict(t_end=0.5), "t_end"),
    (dict(method="hd", grid=[0.9, 0.1]), "grid"),  # a grid must run from t to t_end
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


def _nonsymmetric_field(d):
    """A smooth vector field whose Jacobian is not symmetric (like a learned score): not a gradient."""
    k1, k2 = jax.random.split(jax.random.key(7))
    a = -jnp.eye(d) + 0.3 * jax.random.normal(k1, (d, d), jnp.float64) / jnp.sqrt(d)
    w = 0.5 * jax.random.normal(k2, (d, d), jnp.float64) / jnp.sqrt(d)
    return lambda z: z @ a.T + 0.2 * jnp.tanh(z @ w.T) ** 2


@pytest.mark.parametrize("solver, sym", [pytest.param("cg", False, marks=pytest.mark.slow),
                                         pytest.param("cg", True, marks=pytest.mark.slow),
                                         ("gmres", False), pytest.param("gmres", True, marks=pytest.mark.slow),
                                         pytest.param("bicgstab", False, marks=pytest.mark.slow)])
def test_mode_correction_solvers_match_dense_solve(solver, sym, x64):
    """z = (I - cH)^{-1} grad Lap against a dense solve (jacfwd + numpy), D = 8: on the oracle (H symmetric)
    every solver and symmetrize give the same z; on a non-symmetric field GMRES/BiCGStab solve with J and
    symmetrize with (J + J^T)/2 (CG on the non-symmetric J is not expected to converge: not tested there)."""
    from dgjax.sampling.mode import mode_correction

    d, c = 8, 0.05
    mix = _mixture(d)
    x = mix.sample(jax.random.key(4), 2)
    fields = {"oracle": lambda z: mix.score(PROC)(z, 0.2)}
    if solver != "cg" or sym:
        fields["nonsymmetric"] = _nonsymmetric_field(d)

    def check(name, field):
        lap = lambda z: jax.vmap(lambda zi: jnp.trace(jax.jacfwd(lambda u: field(u[None])[0])(zi)))(z)  # noqa: E731
        z = jax.jit(lambda xx: mode_correction(field, lap, xx, c, cg_steps=d, cg_tol=1e-9, check="dense",
                                               symmetrize=sym, linear_solver=solver))(x)
        for i in range(x.shape[0]):  # the independent computation: dense Jacobian, dense solve
            jac = np.asarray(jax.jacfwd(lambda u: field(u[None])[0])(x[i]))
            h = 0.5 * (jac + jac.T) if sym else jac
            b = np.asarray(jax.grad(lambda u: lap(u[None])[0])(x[i]))
            np.testing.assert_allclose(z[i], np.linalg.solve(np.eye(d) - c * h, b), rtol=1e-7, atol=1e-9,
                                       err_msg=f"{name}, {solver}, symmetrize={sym}")
        if name == "nonsymmetric" and not sym:  # the symmetric part's solve differs: the test can tell them apart
            js = 0.5 * (jac + jac.T)
            assert np.linalg.norm(np.linalg.solve(np.eye(d) - c * js, b) - np.asarray(z[-1])) > 1e-4

    for name, field in fields.items():
        check(name, field)


def test_linear_solver_is_checked():
    with pytest.raises(ValueError, match="linear_solver"):
        dg.ModeTracking(linear_solver="lu")


def test_mode_tracking_follows_newton_mode_under_the_galaxy_process(x64):
    """The galaxy models' process VPSDE(1, 1, 10) (t in [1e-3, 10], not VP's [0, 1]): mode tracking from a
    noisy and a very noisy x_t still follows Newton's mode of the denoising density to t_min."""
    proc = dg.VPSDE(1.0, 1.0, 10.0)
    mix = _mixture(2)
    score = mix.score(proc)

    def grad1(y, x, t, s):
        a, v, _ = proc.transition(jnp.asarray(s), jnp.asarray(t))
        return score(y[None], s)[0] + a * (x - a * y) / v

    @jax.jit
    def newton(y, x_t, t):  # Newton's method from the ODE's end point (independent of the ODE)
        step = lambda yy, xx: yy - jnp.linalg.solve(jax.jacfwd(grad1)(yy, xx, t, proc.t_min),  # noqa: E731
                                                    grad1(yy, xx, t, proc.t_min))
        return jax.lax.fori_loop(0, 30, lambda _, yy: jax.vmap(step)(yy, x_t), y)

    for t in (0.148, 1.74):
        x_t = dg.add_noise(proc, mix.sample(jax.random.key(0), 3), t, jax.random.key(1))
        mode = dg.denoise(score, proc, x_t, t, method="mode", divergence=dg.Exact(), rtol=1e-10, atol=1e-10).x
        y = newton(mode, x_t, t)
        np.testing.assert_allclose(mode, y, atol=1e-6)
        assert float(jnp.max(jnp.abs(mode - x_t))) > 0.01  # the solve moved: the comparison can fail
