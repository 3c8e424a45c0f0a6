"""ODE samplers: sampling from noise to data with the log-density tracked.

A sampler is a small immutable config object. ODE samplers describe their dynamics as one or more
*phases* ``(t_from, t_to, velocity)`` (``ODESampler.phases``); the velocity

    velocity(coeffs, x, s, *, t, div_u, score, divergence, probes) -> dx/dt

gets the score value already computed at (x, t), so a sampler that only rescales the score costs no extra
evaluation; ``div_u`` (N,) is the PF-ODE divergence when the sampler ``needs_divergence`` or tracks log p
(else None). A velocity that needs more than the score value (mode tracking's Hessian-vector products)
uses the keywords ``score`` (the function ``score(x, t)``), ``divergence`` (the estimator) and ``probes``
(the solve's probes, fixed along the path; None unless ``cost`` declares a divergence pass); the others
ignore them (``**_``). ``ODESampler.integrate`` (called by ``dg.sample``) integrates each phase with
diffrax, with the augmented state ``(x, log p per probe)`` when ``track_logp`` (docs/math.md section 4(a)/(b)).
"""

import abc
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
from equinox import AbstractVar

from .. import dynamics as dyn, grids
from .._checks import check_output, check_param, checked_shape, is_concrete
from ..divergence import tracking_start
from ..errors import InvalidArgument
from ..solve import Rebuild, add_nfe, solve, split_args
from .base import AbstractSampler, Cost


class ODESampler(AbstractSampler):
    """Base of the deterministic samplers (abstract): they declare ``phases`` and ``needs_divergence``;
    ``integrate`` solves the phases in turn."""

    # True when the velocity needs div u even without tracking (density guidance with a custom rate).
    needs_divergence: AbstractVar[bool]

    @abc.abstractmethod
    def phases(self, process, t_start, t_end) -> list[tuple]:
        """[(t_from, t_to, velocity)] from t_start down to t_end; ``velocity`` as in the module docstring.

        The number and order of the phases must not depend on whether the sampler's fields are concrete:
        the vector field rebuilds the sampler from traced leaves and takes its phase by index. A phase of
        zero length is skipped."""

    def cost(self, track: bool) -> Cost:
        return Cost(divergence_passes=int(track or self.needs_divergence))

    def integrate(self, score, process, x, *, key, track_logp, divergence, options, logp_T, t_start, t_end):
        return run_ode(score, process, x, self, key, track_logp, divergence, options, logp_T, t_start, t_end)


class PFODE(ODESampler):
    """The probability-flow ODE dx/dt = f x - 1/2 g^2 s (docs/math.md 3); log-density rate -div u
    (docs/math.md 4(a))."""

    needs_divergence: ClassVar[bool] = False

    def phases(self, process, t_start, t_end):
        return [(t_start, t_end, dyn.pf_velocity)]


class ODE(ODESampler):
    """User dynamics dx/dt = drift(x, t, s) with the log-density tracked by docs/math.md 4(b):
    d/dt log p_t(x_t) = -div u + s . (v - u).

    ``drift(x (N, *shape), t scalar, s (N, *shape)) -> v (N, *shape)`` receives the score at (x, t)
    (already evaluated, so using it costs nothing). ``nfe`` counts only the score evaluations dgjax
    makes: a drift that calls other networks adds its own.
    """

    drift: Callable
    needs_divergence: ClassVar[bool] = False

    def phases(self, process, t_start, t_end):
        drift = self.drift

        def velocity(coeffs, x, s, *, t, **_):
            return checked_shape(drift(x, t, s), x, "drift", "it must return dx/dt like x")

        return [(t_start, t_end, velocity)]


class _ODEField(eqx.Module):
    """The diffrax vector field of one phase: plain (y = x) or augmented (y = (x, logp (P, N))).

    args = (probes, params): the score and the sampler are rebuilt from ``params`` (``solve.split_args``) and the
    phase's velocity taken from the rebuilt sampler, so nothing differentiable is closed over. A module, not a
    closure: equal fields give an equal field, so diffrax's compiled solve is reused by the next call with the
    same score, sampler and options (a closure is new at every call)."""

    rebuild: Rebuild  # of (score, sampler, divergence)
    process: Any
    track: bool
    needs_div: bool
    phase: int
    t_start: Any
    t_end: Any

    def __call__(self, t, y, args):
        probes, params = args
        score, sampler, divergence = self.rebuild(params)
        process = self.process
        velocity = sampler.phases(process, self.t_start, self.t_end)[self.phase][2]
        if self.track:
            x, _ = y
            return dyn.augmented_rate(score, process, x, t, divergence, probes,
                                      partial(velocity, score=score, divergence=divergence, probes=probes))
        x = y
        coeffs = process.coefficients_like(t, x)
        if self.needs_div:
            s, lap = dyn.score_and_laplacian(score, x, t, divergence, probes)
            div_u = jnp.mean(dyn.pf_divergence(coeffs, lap, x[0].size), axis=0)
        else:
            s, div_u = score(x, t), None
        return velocity(coeffs, x, s, t=t, div_u=div_u, score=score, divergence=divergence, probes=probes)


def run_ode(score, process, x, sampler: ODESampler, key, track_logp, divergence, options, logp_T, t_start,
            t_end):
    """Integrate the phases of an ODE sampler; returns (y, nfe, num_steps), y = x or (x, log p (P, N))."""
    dim = x[0].size
    needs_div = sampler.needs_divergence
    use_div = sampler.uses_divergence(track_logp)
    probes, logp0 = tracking_start(divergence, key, x, logp_T, draw=use_div)
    y = (x, logp0) if track_logp else x
    phases = sampler.phases(process, t_start, t_end)
    params, rebuild = split_args((score, sampler, divergence))
    total_span = abs(t_start - t_end)
    nfe_per_eval = sampler.nfe_per_eval(track_logp, divergence, dim)
    steps, max_steps = options.steps, options.max_steps
    nfe, num_steps = jnp.asarray(0), jnp.asarray(0)
    steps, full_grid = grids.plan(process, t_start, t_end, steps, options.grid)
    for k, (t0, t1, _) in enumerate(phases):
        if is_concrete(t0) and is_concrete(t1) and float(t0) == float(t1):
            continue  # a phase of zero length (e.g. HighDensity's t_switch at an end of the span)
        phase_max_steps, ts = max_steps, None
        if full_grid is not None:  # the phases share one grid, each phase's boundary added (grids.restrict)
            if not (is_concrete(t0) and is_concrete(t1)):
                raise InvalidArgument("grid: a phase boundary is traced (e.g. HighDensity's t_switch under jit); "
                                      "only grid='t' splits steps at a traced boundary; pass grid='t' or a concrete "
                                      "t_switch")
            phase_steps, ts = None, grids.restrict(full_grid, t0, t1)
        elif steps is None:
            phase_steps = None
        elif is_concrete(t0) and is_concrete(t1):
            phase_steps = max(1, round(steps * abs(float(t0) - float(t1)) / total_span))
            if max_steps is None:  # float rounding of a split phase's step can leave a sliver needing one more
                phase_max_steps = phase_steps + 1
        else:  # a traced phase boundary (e.g. HighDensity's t_switch under jit): the same split, traced
            check_param(isinstance(steps, int) and steps >= 1, "steps", f"must be an integer >= 1; got {steps!r}")
            frac = jnp.abs(jnp.asarray(t0, x.dtype) - jnp.asarray(t1, x.dtype)) / total_span
            phase_steps = jnp.maximum(1, jnp.round(steps * frac)).astype(jnp.int32)
            phase_max_steps = steps + 1 if max_steps is None else max_steps  # as above: room for a sliver
        vf = _ODEField(rebuild, process, track_logp, needs_div, k, t_start, t_end)
        y, evals, stats = solve(vf, y, t0, t1, args=(probes, params), options=options, steps=phase_steps,
                                max_steps=phase_max_steps, grid=ts)
        y = check_output(y, f"dg.sample: the ODE solve of phase {k + 1} of {len(phases)} ({type(sampler).__name__})")
        nfe = add_nfe(nfe, evals, nfe_per_eval)
        num_steps = num_steps + stats["num_steps"]
    return y, nfe, num_steps
