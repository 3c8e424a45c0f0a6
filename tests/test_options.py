"""Options as objects (issue 23 item 4) and one home per formula (item 3): ``dg.SolveOptions`` in one argument
gives what the keywords give at every entry point; grid objects equal their string shorthands; the process
registry round-trips; the shared formulas agree with independent computations."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg
from dgjax import grids, processes

PROC = dg.VP()


def _oracle(d=2):
    mix = dg.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0] * d, [1.0] * d]),
                             jnp.array([[0.3] * d, [0.2] * d]))
    return mix, mix.score(PROC)


def _same(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


OPTS = dg.SolveOptions(solver=dfx.Heun(), steps=6, grid=dg.LogSNRGrid(), max_steps=6)
KW = dict(solver=dfx.Heun(), steps=6, grid="log_snr", max_steps=6)


def test_options_object_equals_keywords_at_every_entry_point():
    _, score = _oracle()
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), (3, 2))
    _same(dg.sample(score, PROC, x, options=OPTS), dg.sample(score, PROC, x, **KW))
    _same(dg.log_likelihood(score, PROC, x, key=key, options=OPTS), dg.log_likelihood(score, PROC, x, key=key, **KW))
    _same(dg.denoise(score, PROC, x, 0.5, method="hd", key=key, track_logp=True, options=OPTS),
          dg.denoise(score, PROC, x, 0.5, method="hd", key=key, track_logp=True, **KW))
    _same(dg.score_alignment(score, PROC, x, 0.3, return_details=True, options=OPTS),
          dg.score_alignment(score, PROC, x, 0.3, return_details=True, **KW))
    fwd = dg.SolveOptions(steps=5, grid=dg.EDMGrid())
    _same(dg.forward_sde_logp(score, PROC, x, key=key, options=fwd),
          dg.forward_sde_logp(score, PROC, x, key=key, steps=5, grid="edm"))


def test_keywords_override_the_options_object():
    _, score = _oracle()
    x = jax.random.normal(jax.random.key(1), (3, 2))
    base = dg.SolveOptions(solver=dfx.Euler(), steps=3)
    _same(dg.sample(score, PROC, x, options=base, solver=dfx.Heun(), steps=6, grid="log_snr", max_steps=6),
          dg.sample(score, PROC, x, options=OPTS))
    with pytest.raises(ValueError, match="options"):
        dg.sample(score, PROC, x, options={"steps": 3})


@pytest.mark.parametrize("obj,name", [(dg.UniformGrid(), "t"), (dg.LogSNRGrid(), "log_snr"), (dg.EDMGrid(), "edm")])
def test_grid_object_equals_its_shorthand(obj, name):
    assert grids.as_grid(name) == obj
    for proc in (dg.VP(), dg.VPLinear(), dg.EDM()):
        np.testing.assert_array_equal(dg.step_times(proc, proc.t_max, proc.t_min, 7, obj),
                                      dg.step_times(proc, proc.t_max, proc.t_min, 7, name))
    _, score = _oracle()
    x = jax.random.normal(jax.random.key(1), (3, 2))
    _same(dg.sample(score, PROC, x, steps=5, grid=obj), dg.sample(score, PROC, x, steps=5, grid=name))


def test_times_grid_and_edm_rho():
    ts = dg.step_times(PROC, PROC.t_max, PROC.t_min, 5, "log_snr")
    _, score = _oracle()
    x = jax.random.normal(jax.random.key(1), (3, 2))
    _same(dg.sample(score, PROC, x, grid=dg.TimesGrid(ts)), dg.sample(score, PROC, x, grid=ts))
    # EDMGrid(rho): uniform in s^(1/rho), s = exp(-lambda / 2), independently of the grid code
    proc = dg.EDM()
    ts = dg.step_times(proc, proc.t_max, proc.t_min, 6, dg.EDMGrid(rho=3.0))
    np.testing.assert_allclose(np.diff(ts ** (1 / 3.0)), np.diff(ts ** (1 / 3.0))[0], rtol=1e-9)
    with pytest.raises(ValueError, match="rho"):
        dg.EDMGrid(rho=-1.0)
    with pytest.raises(ValueError, match="grid"):
        dg.TimesGrid([0.5])


def test_denoise_with_a_grid_matches_sample_on_that_grid():
    _, score = _oracle()
    x = jax.random.normal(jax.random.key(1), (3, 2))
    t, t_end = 0.6, 0.1
    ts = dg.step_times(PROC, t, t_end, 5, "edm")
    out = dg.denoise(score, PROC, x, t, t_end=t_end, method="hd", grid=dg.TimesGrid(ts))
    ref = dg.sample(score, PROC, x, sampler=dg.HighDensity(t_switch=t), t_start=t, t_end=t_end, grid=ts)
    _same(out.x, ref.x)
    assert not np.allclose(out.x, dg.denoise(score, PROC, x, t, t_end=t_end, method="hd", steps=5, grid="t").x)
    with pytest.raises(ValueError, match="logp_t"):  # the encoding t -> t_max is not on an explicit t -> t_end grid
        dg.denoise(score, PROC, x, t, t_end=t_end, method="hd", grid=ts, track_logp=True, key=jax.random.key(0))


def test_denoise_track_logp_starts_from_log_likelihood_at_t(x64):
    mix, score = _oracle()
    x = jax.random.normal(jax.random.key(1), (3, 2), jnp.float64)
    t, tol = 0.5, dict(rtol=1e-8, atol=1e-8)
    out = dg.denoise(score, PROC, x, t, method="hd", divergence=dg.Exact(), track_logp=True, **tol)
    ll = dg.log_likelihood(score, PROC, x, divergence=dg.Exact(), t_start=t, **tol)
    np.testing.assert_array_equal(out.logp_T, ll.logp)
    # log_likelihood from t_start = t is log p_t(x) (exact with the exact p_T; the standard prior is off by ~1e-3)
    exact_T = lambda z: mix.log_prob(PROC)(z, PROC.t_max)  # noqa: E731
    ll = dg.log_likelihood(score, PROC, x, divergence=dg.Exact(), t_start=t, prior_log_prob=exact_T, **tol)
    np.testing.assert_allclose(ll.logp, mix.log_prob(PROC)(x, t), atol=1e-6)


@pytest.mark.parametrize("solver", [None, "cg", "gmres", "bicgstab"])
def test_mode_tracking_with_a_lineax_solver(x64, solver):
    import lineax as lx

    mix, score = _oracle(3)
    x = jax.random.normal(jax.random.key(1), (2, 3), jnp.float64)
    atol = 0.1 * 1e-8 / 3**0.5  # what the shorthand derives from cg_tol (1e-8 in float64) and D = 3
    made = {None: "cg", "cg": lx.CG(rtol=0.0, atol=atol, max_steps=3),
            "gmres": lx.GMRES(rtol=0.0, atol=atol, max_steps=2, restart=3),
            "bicgstab": lx.BiCGStab(rtol=0.0, atol=atol, max_steps=3)}[solver]
    kw = dict(method="mode", t_end=0.3, divergence=dg.Exact(), rtol=1e-7, atol=1e-7)
    obj = dg.denoise(score, PROC, x, 0.5, sampler_kwargs=dict(linear_solver=made), **kw)
    ref = dg.denoise(score, PROC, x, 0.5, sampler_kwargs=dict(linear_solver=solver or "cg", cg_steps=3), **kw)
    np.testing.assert_allclose(obj.x, ref.x, rtol=1e-12, atol=1e-12)  # the shorthand builds the same solver
    # the exact score's Jacobian is symmetric: every solver reaches the mode Newton's method finds
    a, v, _ = PROC.transition(jnp.asarray(0.3), jnp.asarray(0.5))

    def grad(y, xt):
        return score(y[None], 0.3)[0] + a * (xt - a * y) / v

    y = obj.x
    for _ in range(20):
        y = jax.vmap(lambda yy, xx: yy - jnp.linalg.solve(jax.jacfwd(grad)(yy, xx), grad(yy, xx)))(y, x)
    np.testing.assert_allclose(obj.x, y, atol=1e-5)
    with pytest.raises(ValueError, match="max_steps"):
        dg.ModeTracking(linear_solver=lx.CG(rtol=1e-6, atol=1e-6))


# ------------------------------------------------------------------------------------------------------
# one home per formula
# ------------------------------------------------------------------------------------------------------
def test_process_registry_round_trips_every_process():
    for name, make in dg.PROCESSES.items():
        p = make()
        cfg = processes.process_to_config(p)
        q = processes.process_from_config(cfg)
        assert type(q) is type(p) and processes.process_to_config(q) == cfg, name
    assert processes.process_constructor("cosine") is dg.VPCosine
    with pytest.raises(ValueError, match="unknown process"):
        processes.process_constructor("vq")
    with pytest.raises(ValueError, match="not a registered"):
        processes.process_to_config(dg.CustomProcess(lambda t: -0.5 * t, lambda t: 0.5 * jnp.log(-jnp.expm1(-t)),
                                                     1e-3, 10.0))


def test_vplinear_is_the_vpsde_it_is():
    assert dg.VPLinear() == dg.VPSDE(0.1, 20.0, 1.0) and dg.VPLinear(0.2, 10.0, 1e-2) == dg.VPSDE(0.2, 10.0, 1.0, 1e-2)


def test_transition_kernel_and_time_of_log_snr(x64):
    s, t = jnp.asarray(0.2), jnp.asarray(0.7)
    for proc in (dg.VP(), dg.VPCosine(), dg.EDM(1e-3, 80.0), dg.LinearFlow()):
        s_, t_ = proc.t_min + (proc.t_max - proc.t_min) * s, proc.t_min + (proc.t_max - proc.t_min) * t
        a, v, c = proc.transition(s_, t_)
        # x_t = alpha_t x_0 + sigma_t eps and x_s likewise: Var(x_t | x_s) by Gaussian conditioning
        np.testing.assert_allclose(a, proc.alpha(t_) / proc.alpha(s_), rtol=1e-12)
        np.testing.assert_allclose(v, proc.sigma(t_) ** 2 - a**2 * proc.sigma(s_) ** 2, rtol=1e-12)
        np.testing.assert_allclose(c, v / a**2, rtol=1e-9)
        lam = proc.log_snr(t_)
        np.testing.assert_allclose(proc.time_of_log_snr(lam), t_, rtol=1e-12)
        np.testing.assert_allclose(jax.grad(proc.time_of_log_snr)(lam), 1 / jax.grad(proc.log_snr)(t_), rtol=1e-9)


def test_median_radius_is_prior_guidance_at_one_half():
    x = jax.random.normal(jax.random.key(3), (4, 5))
    guided = dg.DensityGuidance(0.3).prepare(PROC, x)
    np.testing.assert_allclose(guided, dg.prior_guidance(PROC, x, 0.5), rtol=1e-6)


def test_forward_sde_validates_brownian():
    _, score = _oracle()
    x = jax.random.normal(jax.random.key(1), (3, 2))
    with pytest.raises(ValueError, match="brownian"):  # a misspelt kind gave a virtual tree silently
        dg.forward_sde_logp(score, PROC, x, key=jax.random.key(0), steps=4, brownian="virtal")
