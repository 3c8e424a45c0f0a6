"""The one sampler interface (dgjax.sampling.base), SolveOptions, the public density-guidance formulas and the
typed infeasibility error."""

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg
from dgjax.sampling import AbstractSampler, Cost, log_density_shift, quantile_velocity
from dgjax.solve import SolveOptions

VP = dg.VP()


def test_every_sampler_shares_one_interface_and_declares_its_cost():
    hutch = dg.Hutchinson(3)
    noise = dg.noise_window(0.2, 0.2, 0.6)
    d = 5
    # (sampler, NFE per evaluation without / with tracking), from the cost model of each sampler's docstring
    cases = [(dg.PFODE(), 1, 4), (dg.HighDensity(0.5), 1, 4), (dg.DensityGuidance(0.3), 1, 4),
             (dg.DensityGuidance(rate=lambda x, t: jnp.zeros(x.shape[0])), 4, 4), (dg.ReverseSDE(), 1, 1),
             (dg.ReverseSDE(scheme="stratonovich"), 1, 4), (dg.SDE(lambda x, t, s: s, lambda x, t, s, dw: dw), 1, 7),
             (dg.StochasticDensityGuidance(0.3, noise), 4, 5), (dg.StochasticDensityGuidance(0.3, noise, True), 5, 5),
             # mode tracking: score + Lap and grad Lap (2 x 3) + min(D, 64) CG HVPs + residual + D (dense check)
             (dg.ModeTracking(), 1 + 6 + 5 + 1 + 5, 1 + 9 + 5 + 1 + 5),
             # curvature check: one probe HVP (two with symmetrize); Lanczos: min(lanczos_steps, D) HVPs
             (dg.ModeTracking(cg_steps=2, check="curvature", symmetrize=True), 1 + 6 + 2 * 3 + 2, 1 + 9 + 2 * 3 + 2),
             (dg.ModeTracking(check="lanczos", lanczos_steps=3), 1 + 6 + 5 + 1 + 3, 1 + 9 + 5 + 1 + 3)]
    for sampler, plain, tracked in cases:
        assert isinstance(sampler, AbstractSampler)
        assert isinstance(sampler.cost(False), Cost)
        nfe = (sampler.nfe_per_eval(False, hutch, d), sampler.nfe_per_eval(True, hutch, d))
        assert nfe == (plain, tracked), sampler
    with pytest.raises(TypeError):
        AbstractSampler()


def test_reported_nfe_is_the_declared_cost_times_the_evaluations():
    mix = dg.random_mixture(jax.random.key(0), 2, (3,))
    x_T = VP.prior_sample(jax.random.key(1), (4, 3))
    out = dg.sample(mix.score(VP), VP, x_T, sampler=dg.StochasticDensityGuidance(0.4, dg.noise_window(0.1, 0.2, 0.8)),
                    key=jax.random.key(2), steps=12, divergence=dg.Hutchinson(2))
    assert int(out.nfe) == 12 * (1 + 2)  # Euler: one evaluation per step; score + 2 probe JVPs
    out = dg.sample(mix.score(VP), VP, x_T, sampler=dg.HighDensity(0.5), steps=10, solver=diffrax.Euler(),
                    track_logp=True, key=jax.random.key(3), divergence=dg.Hutchinson(2))
    assert int(out.nfe) == int(out.num_steps) * 3


def test_solve_options_is_immutable_and_replaceable():
    o = SolveOptions(steps=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.steps = 9
    assert o.replace(rtol=1e-3).rtol == 1e-3 and o.replace(rtol=1e-3).steps == 8 and o.rtol is None


def test_public_velocity_and_shift_match_the_sampler():
    d = 4
    mix = dg.random_mixture(jax.random.key(4), 3, (d,))
    x = VP.prior_sample(jax.random.key(5), (6, d)) * 0.3
    t = jnp.asarray(0.4)
    s = mix.score(VP)(x, t)
    coeffs = VP.coefficients(t)
    g = dg.DensityGuidance(0.3)
    v = quantile_velocity(coeffs, x, s, 0.3)
    np.testing.assert_array_equal(v, g.velocity(coeffs, x, s, t=t))
    # independent: v = f x - 1/2 g^2 (1 + sqrt(2D) Phi^-1(q) / |sigma s|^2) s
    from scipy.stats import norm
    eta = 1 + np.sqrt(2 * d) * norm.ppf(0.3) / (float(coeffs.sigma) ** 2 * np.sum(np.asarray(s) ** 2, axis=1))
    ref = float(coeffs.f) * np.asarray(x) - 0.5 * float(coeffs.g2) * eta[:, None] * np.asarray(s)
    np.testing.assert_allclose(v, ref, rtol=2e-5, atol=1e-6)
    shift = 0.5 * (float(VP.log_snr(VP.t_min)) - float(VP.log_snr(VP.t_max))) * np.sqrt(2 * d) * norm.ppf(0.3)
    np.testing.assert_allclose(float(log_density_shift(VP, 0.3, d)), shift, rtol=1e-6)
    assert float(g.log_density_shift(VP, d)) == float(log_density_shift(VP, 0.3, d))


def test_infeasible_guidance_raises_the_typed_error():
    d = 2
    mix = dg.random_mixture(jax.random.key(30), 3, (d,))
    x_T = VP.prior_sample(jax.random.key(31), (8, d))
    with pytest.raises(dg.InfeasibleGuidance, match="density guidance is infeasible") as info:
        dg.sample(mix.score(VP), VP, x_T, sampler=dg.DensityGuidance(0.9), steps=50, solver=diffrax.Euler())
    assert isinstance(info.value, eqx.EquinoxRuntimeError)  # old except clauses keep catching it
    assert isinstance(dg.errors.classify(info.value), dg.InfeasibleGuidance)


def test_high_density_constant_steps_need_no_max_steps_margin():
    # float32 rounding of a split phase's step once left a sliver needing one step more than max_steps
    d = 3
    mix = dg.random_mixture(jax.random.key(6), 2, (d,))
    x_T = VP.prior_sample(jax.random.key(7), (4, d))
    run = jax.jit(lambda x: dg.sample(mix.score(VP), VP, x, sampler=dg.HighDensity(0.9), steps=16).x)
    assert bool(jnp.all(jnp.isfinite(run(x_T))))
