"""Samplers and ``dg.sample``: ODE sampling from noise to data with the log-density tracked.

A sampler is a small immutable config object. ODE samplers describe their dynamics as one or more
*phases* ``(t_from, t_to, velocity)``; ``velocity(coeffs, x, s, t=..., div_u=...) -> dx/dt`` gets
the score value already computed at (x, t), so a sampler that only rescales the score costs no extra
evaluation. ``dg.sample`` integrates each phase with diffrax, with the augmented state
``(x, log p per probe)`` when ``track_logp`` (MATH.md section 4(a)/(b)).
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from . import dynamics as dyn
from . import grids
from ._checks import check_batch, check_finite, check_param, check_per_sample, check_score_fn, check_time, is_concrete
from .divergence import DivergenceEstimator, Hutchinson
from .solve import solve
from .stochastic import SDESampler, run_sde

Array = jax.Array


class Sample(eqx.Module):
    """What ``dg.sample`` returns.

    x: (N, *shape) samples at t_end (default t_min).
    logp: (N,) tracked log p_{t_end}(x) (None unless ``track_logp``).
    logp_T: (N,) log p_T(x_T) the tracking started from (None unless ``track_logp``).
    logp_stderr: (N,) standard error of ``logp`` across Hutchinson probes (0 for one probe or Exact).
    nfe: score evaluations per sample (a JVP of the score counts as one more); -1 if the solver's
      evaluation count is unknown.
    num_steps: solver steps taken (accepted and rejected), summed over phases.
    """

    x: Array
    logp: Array | None
    logp_T: Array | None
    logp_stderr: Array | None
    nfe: Array
    num_steps: Array


class ODESampler(eqx.Module):
    """Base of the deterministic samplers."""

    # True when the velocity needs div u even without tracking (density guidance with a custom rate).
    needs_divergence: bool = eqx.field(static=True, default=False, init=False)

    def prepare(self, process, x_T):
        """Transform the starting latent (e.g. rescale it); default: unchanged."""
        return x_T

    def phases(self, process, t_start: float, t_end: float):
        raise NotImplementedError


class PFODE(ODESampler):
    """The probability-flow ODE dx/dt = f x - 1/2 g^2 s (MATH 3); log-density rate -div u (MATH 4(a))."""

    def phases(self, process, t_start, t_end):
        return [(t_start, t_end, dyn.pf_velocity)]


class ODE(ODESampler):
    """User dynamics dx/dt = drift(x, t, s) with the log-density tracked by MATH 4(b):
    d/dt log p_t(x_t) = -div u + s . (v - u).

    ``drift(x (N, *shape), t scalar, s (N, *shape)) -> v (N, *shape)`` receives the score at (x, t)
    (already evaluated, so using it costs nothing). ``nfe`` counts only the score evaluations dgjax
    makes: a drift that calls other networks adds its own.
    """

    drift: Callable

    def phases(self, process, t_start, t_end):
        drift = self.drift

        def velocity(coeffs, x, s, *, t, **_):
            v = drift(x, t, s)
            if getattr(v, "shape", None) != x.shape:
                raise ValueError(f"drift: returned shape {getattr(v, 'shape', type(v))} for x of shape {x.shape}; "
                                 f"it must return dx/dt like x")
            return v

        return [(t_start, t_end, velocity)]


def _ode_vector_field(score, process, divergence, track: bool, needs_div: bool, velocity):
    """The diffrax vector field of one phase: plain (y = x) or augmented (y = (x, logp (P, N)))."""

    def vf(t, y, probes):
        if track:
            x, _ = y
            return dyn.augmented_rate(score, process, x, t, divergence, probes, velocity)
        x = y
        coeffs = process.coefficients(jnp.asarray(t, dtype=x.dtype))
        if needs_div:
            s, lap = dyn.score_and_laplacian(score, x, t, divergence, probes)
            div_u = jnp.mean(dyn.pf_divergence(coeffs, lap, x[0].size), axis=0)
        else:
            s, div_u = score(x, t), None
        return velocity(coeffs, x, s, t=t, div_u=div_u)

    return vf


def sample(score: Callable, process, x_T, *, sampler=None, key=None, track_logp: bool = False,
           divergence: DivergenceEstimator | None = None, solver=None, steps: int | None = None,
           rtol: float | None = None, atol: float | None = None, logp_T=None,
           t_start: float | None = None, t_end: float | None = None, adjoint=None,
           max_steps: int | None = None, grid=None) -> Sample:
    """Integrate a sampler from ``x_T`` at t_start (default t_max) down to t_end (default t_min).

    Args:
      score: pure ``score(x (N, *shape), t) -> like x``.
      process: the forward process (``dg.VP()`` etc.).
      x_T: (N, *shape) starting latents (finite).
      sampler: ``dg.PFODE()`` (default), ``dg.ODE(drift)``, a guidance sampler, or a stochastic one
        (``dg.ReverseSDE()``, ``dg.SDE(drift, diffusion)``, ``dg.StochasticDensityGuidance(q, noise)``).
      key: PRNG key; needed for Hutchinson probes when tracking (one key per sample is split from it)
        and for the Brownian path of stochastic samplers.
      track_logp: integrate log p_t(x_t) along the path (MATH 4) and return it in ``Sample.logp``.
      divergence: ``dg.Hutchinson(num_probes=1)`` (default) or ``dg.Exact()``.
      solver: any diffrax ODE solver (default ``diffrax.Tsit5()``); for SDE samplers ``diffrax.Euler()``
        (Euler-Maruyama, the default) or a Stratonovich solver where the sampler allows it.
      steps: number of constant steps; or ``rtol``/``atol`` for the adaptive PID controller
        (default adaptive, rtol = atol = 1e-5).
      grid: where the constant steps go (``dgjax.grids``): "t", "log_snr", "edm", or an array of times
        from t_start to t_end (then ``steps`` may be omitted); default the process's ``default_grid``.
        Every phase of a multi-phase sampler uses its part of the one grid (the switch time added).
      logp_T: (N,) log-density of x_T to start from, or a callable ``logp_T(x) -> (N,)`` evaluated at the
        latent the sampler actually starts from (after ``sampler.prepare``, e.g. the median rescaling of
        density guidance); default the prior ``process.prior_log_prob``.
      adjoint: a diffrax adjoint for gradients (default: diffrax's recursive checkpointing).

    Returns: ``dg.Sample`` (x, logp, logp_T, logp_stderr, nfe, num_steps).
    """
    sampler = PFODE() if sampler is None else sampler
    if not isinstance(sampler, (ODESampler, SDESampler)):
        raise ValueError(f"sampler: expected a dgjax sampler such as dg.PFODE(); got {sampler!r}")
    divergence = Hutchinson() if divergence is None else divergence
    x_T = check_finite(check_batch(x_T, "x_T"), "x_T")
    t_start = process.t_max if t_start is None else t_start
    t_end = process.t_min if t_end is None else t_end
    check_time(process, t_start, "t_start")
    check_time(process, t_end, "t_end")
    if is_concrete(jnp.asarray(t_start)) and is_concrete(jnp.asarray(t_end)) and not float(t_end) < float(t_start):
        raise ValueError(f"t_end: sampling runs from noise to data, so t_end must be below t_start; got {t_end} >= {t_start}")
    check_score_fn(score, x_T, jnp.asarray(t_start, dtype=x_T.dtype))
    x = sampler.prepare(process, x_T)
    if isinstance(sampler, SDESampler):
        logp0 = _initial_logp(process, x, logp_T) if track_logp else None
        steps, ts = grids.plan(process, t_start, t_end, steps, grid)
        if ts is not None:  # the SDE is integrated in tau = t_start - t
            steps, ts = len(ts) - 1, float(t_start) - ts
        y, nfe, num_steps = run_sde(score, process, x, sampler, key, track_logp, divergence, solver, steps, rtol,
                                    atol, logp0, t_start, t_end, adjoint, max_steps, ts=ts)
        return _make_sample(y, logp0, nfe, num_steps, track_logp)
    return _run_ode_phases(score, process, x, sampler, key, track_logp, divergence, solver, steps, rtol,
                           atol, logp_T, t_start, t_end, adjoint, max_steps, grid)


def _run_ode_phases(score, process, x, sampler, key, track_logp, divergence, solver, steps, rtol, atol,
                    logp_T, t_start, t_end, adjoint, max_steps, grid=None) -> Sample:
    n, dim = x.shape[0], x[0].size
    needs_div = sampler.needs_divergence
    use_div = track_logp or needs_div
    probes = divergence.draw(key, x) if use_div else None
    p = 1 if probes is None else probes.shape[0]
    if track_logp:
        logp_T = _initial_logp(process, x, logp_T)
        y = (x, jnp.broadcast_to(logp_T, (p, n)))
    else:
        y = x
    phases = sampler.phases(process, t_start, t_end)
    total_span = abs(t_start - t_end)
    nfe_per_eval = 1 + (divergence.num_jvps(dim) if use_div else 0)
    nfe, num_steps = jnp.asarray(0), jnp.asarray(0)
    steps, full_grid = grids.plan(process, t_start, t_end, steps, grid)
    for t0, t1, velocity in phases:
        phase_max_steps, ts = max_steps, None
        if full_grid is not None:
            if not (is_concrete(t0) and is_concrete(t1)):
                raise ValueError("grid: a phase boundary is traced (e.g. HighDensity's t_switch under jit); only "
                                 "grid='t' splits steps at a traced boundary; pass grid='t' or a concrete t_switch")
            phase_steps, ts = None, grids.restrict(full_grid, t0, t1)
        elif steps is None:
            phase_steps = None
        elif is_concrete(t0) and is_concrete(t1):
            phase_steps = max(1, round(steps * abs(float(t0) - float(t1)) / total_span))
        else:  # a traced phase boundary (e.g. HighDensity's t_switch under jit): the same split, traced
            check_param(isinstance(steps, int) and steps >= 1, "steps", f"must be an integer >= 1; got {steps!r}")
            frac = jnp.abs(jnp.asarray(t0, x.dtype) - jnp.asarray(t1, x.dtype)) / total_span
            phase_steps = jnp.maximum(1, jnp.round(steps * frac)).astype(jnp.int32)
            phase_max_steps = steps if max_steps is None else max_steps
        vf = _ode_vector_field(score, process, divergence, track_logp, needs_div, velocity)
        y, evals, stats = solve(vf, y, t0, t1, args=probes, solver=solver, steps=phase_steps, rtol=rtol,
                                atol=atol, adjoint=adjoint, max_steps=phase_max_steps, ts=ts)
        nfe = jnp.where((evals < 0) | (nfe < 0), -1, nfe + nfe_per_eval * evals)
        num_steps = num_steps + stats["num_steps"]
    return _make_sample(y, logp_T, nfe, num_steps, track_logp)


def _initial_logp(process, x, logp_T):
    """log p_T at the starting latent: the prior by default, an (N,) array, or a callable of x."""
    n = x.shape[0]
    if logp_T is None:
        logp_T = process.prior_log_prob(x)
    elif callable(logp_T):
        logp_T = check_per_sample(logp_T(x), n, "logp_T(x)")
    else:
        logp_T = check_per_sample(logp_T, n, "logp_T")
    return logp_T.astype(x.dtype)


def _make_sample(y, logp_T, nfe, num_steps, track_logp) -> Sample:
    if track_logp:
        x_out, logp_probes = y
        logp, stderr = dyn.mean_and_stderr(logp_probes)
        return Sample(x_out, logp, logp_T, stderr, nfe, num_steps)
    return Sample(y, None, None, None, nfe, num_steps)
