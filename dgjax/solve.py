"""The solve layer over diffrax: integrate a vector field over a pytree state from t0 to t1.

dgjax writes no integrator: every solve is one ``diffrax.diffeqsolve`` call. This module picks the
step-size controller (constant steps, or a PID controller for ``rtol``/``atol``), uses a norm that
weights each leaf of the state equally (so the per-sample log-density is controlled as tightly as the
(N, D) sample, rather than drowned in it by a plain RMS), and counts vector-field evaluations from
diffrax's step statistics so that NFE can be reported.

Failures are typed (``dgjax.errors``), for every entry point: an adaptive solve stops at its first step
whose candidate state is not finite (``StopAtNonFinite``; a NaN score would otherwise make the PID
controller's next step size NaN and spin to ``max_steps``) and raises ``NonFiniteError`` with the time
reached; an exhausted step budget raises ``MaxStepsReached``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._checks import all_finite, check_int, check_param, check_value, is_concrete
from .errors import InvalidArgument, MaxStepsReached, NonFiniteError, RuntimeCheckError
from .grids import AbstractGrid, UniformGrid

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5
DEFAULT_MAX_STEPS = 16384


@dataclasses.dataclass(frozen=True)
class SolveOptions:
    """How to integrate, in one immutable object (what ``dg.sample`` and friends forward to diffrax).

    solver: a diffrax solver (None: the caller's default, e.g. Tsit5 for ODEs, Euler for Ito SDEs).
    steps: number of constant steps; or rtol/atol for the adaptive PID controller (default adaptive,
      rtol = atol = 1e-5). adjoint: a diffrax adjoint (None: diffrax's default). max_steps: the solve's
      step bound (None: ``steps`` for constant steps, 16384 for adaptive ones).
    grid: where the constant steps go (``dgjax.grids``): ``dg.UniformGrid()``, ``dg.LogSNRGrid()``,
      ``dg.EDMGrid(rho)``, ``dg.TimesGrid(times)`` (or the shorthands "t", "log_snr", "edm", an array of times),
      or None (the process's ``default_grid`` when ``steps`` is given). Samplers resolve a grid against the
      process (``grids.plan``) and hand ``solve_term`` the times, which diffrax steps to exactly (``StepTo``).
    Every entry point (``dg.sample``, ``dg.log_likelihood``, ``dg.denoise``, ``dg.score_alignment``,
    ``dg.forward_sde_logp``) takes one as ``options=`` and its fields as keywords; a keyword given (not None)
    overrides the object's field (``merge_options``).
    To add an option: add a field here (with a default) and read it in ``solve_term``.
    """

    solver: Any = None
    steps: Any = None
    rtol: float | None = None
    atol: float | None = None
    adjoint: Any = None
    max_steps: int | None = None
    grid: Any = None

    def replace(self, **changes) -> SolveOptions:
        return dataclasses.replace(self, **changes)


def merge_options(options: SolveOptions | None, **keywords) -> SolveOptions:
    """``options`` (default ``SolveOptions()``) with each keyword that is not None put over its field: the
    entry points' keywords (solver, steps, rtol, atol, adjoint, max_steps, grid) override ``options=``."""
    if options is None:
        options = SolveOptions()
    elif not isinstance(options, SolveOptions):
        raise InvalidArgument(f"options: expected a dg.SolveOptions(...) (or None); got {options!r}")
    return options.replace(**{k: v for k, v in keywords.items() if v is not None})


def leafwise_rms_norm(y) -> jax.Array:
    """max over pytree leaves of the RMS of that leaf (error norm for the PID controller)."""
    leaves = [jnp.sqrt(jnp.mean(jnp.abs(leaf) ** 2)) for leaf in jax.tree_util.tree_leaves(y)]
    return jnp.max(jnp.stack(leaves))


class StopAtNonFinite(dfx.AbstractAdaptiveStepSizeController):
    """An adaptive controller that ends the solve at the first step whose candidate state holds NaN or inf.

    diffrax's PID controller rejects such a step, but its error norm is then NaN, so is the next step size,
    and the solve runs on (every step rejected) until ``max_steps``. This wrapper returns diffrax's
    ``RESULTS.dt_min_reached`` there instead (dgjax sets no ``dtmin``, so that result means this stop), which
    ends the loop at once; ``solve_term`` raises it as ``NonFiniteError`` with the time reached.
    """

    controller: dfx.PIDController
    rtol: Any
    atol: Any
    norm: Callable

    def __init__(self, controller: dfx.PIDController):
        self.controller = controller
        self.rtol, self.atol, self.norm = controller.rtol, controller.atol, controller.norm

    def wrap(self, direction):
        return StopAtNonFinite(self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        keep, next_t0, next_t1, *out, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state)
        # the vector field failed on a finite step; or the next step size is not finite (the error norm was
        # NaN: 0/0 where atol underflows): both would reject every later step
        vector_field = ~all_finite(y1_candidate) & jnp.isfinite(t1 - t0)
        step_size = ~jnp.isfinite(next_t1 - next_t0)
        result = dfx.RESULTS.where(step_size, NONFINITE_STEP_SIZE, result)
        return (keep, next_t0, next_t1, *out, dfx.RESULTS.where(vector_field, NONFINITE_VECTOR_FIELD, result))


# the two stops of StopAtNonFinite, as results of diffrax's loop that dgjax's solves cannot give otherwise
# (no dtmin, no ClipStepSizeController)
NONFINITE_VECTOR_FIELD = dfx.RESULTS.dt_min_reached
NONFINITE_STEP_SIZE = dfx.RESULTS.max_steps_rejected


def controller(steps: int | None, rtol: float | None, atol: float | None, t0: float | Array, t1: float | Array):
    """(stepsize_controller, dt0, max_steps) from the user's steps / rtol / atol choice.

    ``steps`` gives ``steps`` constant steps; ``rtol``/``atol`` (either) an adaptive PID controller;
    neither: adaptive with rtol = atol = 1e-5.
    """
    if steps is not None and (rtol is not None or atol is not None):
        raise InvalidArgument("steps: give either steps (constant step size) or rtol/atol (adaptive), not both")
    if steps is not None:
        if isinstance(steps, jax.core.Tracer):  # a traced step count: the caller bounds it with max_steps
            return dfx.ConstantStepSize(), (t1 - t0) / steps, None
        steps = check_int(steps, "steps")  # not a bool, not a float (True and 2.5 are no step counts)
        return dfx.ConstantStepSize(), (t1 - t0) / steps, steps
    rtol = DEFAULT_RTOL if rtol is None else rtol
    atol = DEFAULT_ATOL if atol is None else atol
    check_param(0 < rtol < float("inf") and 0 < atol < float("inf"), "rtol",
                f"rtol and atol must be finite positive numbers; got {rtol}, {atol}")
    return StopAtNonFinite(dfx.PIDController(rtol=rtol, atol=atol, norm=leafwise_rms_norm)), None, DEFAULT_MAX_STEPS


def vf_evals_per_solve(solver, num_steps) -> jax.Array:
    """Number of vector-field evaluations a diffrax solve made, from its step count.

    Explicit Runge-Kutta with s stages: s per step, or 1 + (s - 1) per step when first-same-as-last
    (FSAL: Tsit5, Dopri5/8, Bosh3). Euler: one per step. Returns -1 for solvers it cannot count.
    Checked against an evaluation counter in tests/test_solve.py.
    """
    if isinstance(solver, dfx.Euler):
        return num_steps
    if isinstance(solver, dfx.ReversibleHeun):  # one evaluation per step, plus one at the start
        return 1 + num_steps
    tableau = getattr(solver, "tableau", None)
    if isinstance(solver, dfx.AbstractRungeKutta) and tableau is not None and hasattr(tableau, "c"):
        stages = len(tableau.c) + 1
        if tableau.fsal:
            return 1 + (stages - 1) * num_steps
        return stages * num_steps
    return jnp.asarray(-1)


def solve_term(term, y0: Any, t0: float | Array, t1: float | Array, *, args: Any = None,
               options: SolveOptions | None = None, **kwargs):
    """One ``diffrax.diffeqsolve`` of ``term`` from t0 to t1 with dgjax's controller choice.

    ``options`` (a ``SolveOptions``) or its fields as keyword arguments (solver, steps, rtol, atol, adjoint,
    max_steps, grid; keywords override ``options``). ``grid`` here is None, "t" (uniform constant steps) or
    the times to step to (from ``dgjax.grids``), t0 first and t1 last. Returns (y1, num_vf_evals, stats) with stats
    diffrax's statistics dictionary.
    """
    options = (SolveOptions() if options is None else options).replace(**kwargs)
    solver, steps, rtol, atol = options.solver, options.steps, options.rtol, options.atol
    adjoint, max_steps = options.adjoint, options.max_steps
    solver = dfx.Tsit5() if solver is None else solver
    # time in the state's precision: diffrax promotes the state to the time dtype (float64 under x64)
    tdtype = jax.tree_util.tree_leaves(y0)[0].dtype
    ts = None if isinstance(options.grid, UniformGrid) or (isinstance(options.grid, str) and options.grid == "t") \
        else options.grid
    if isinstance(ts, (str, AbstractGrid)):
        raise InvalidArgument(f"grid: the grid {ts!r} needs the process; resolve it to times with "
                         f"dgjax.grids.step_times (dg.sample and friends do) before calling solve")
    if ts is not None:
        if steps is not None or rtol is not None or atol is not None:
            raise InvalidArgument("grid: a grid of times fixes the steps; do not also pass steps or rtol/atol to solve")
        if is_concrete(ts):  # distinct in float64 (grids checks that) but maybe not in the state's precision
            cast = np.asarray(ts, np.float64).astype(tdtype)
            d = np.diff(cast)
            check_param(bool(np.all(d > 0) or np.all(d < 0)), "grid",
                        f"some neighbouring times coincide in {jnp.dtype(tdtype).name} (the state's precision); "
                        f"space them at least {float(jnp.finfo(tdtype).eps):g} x |t| apart or enable float64 "
                        f"(jax.config.update('jax_enable_x64', True))")
        ts = jnp.asarray(ts, tdtype)
        ctrl, dt0, default_max = dfx.StepTo(ts), None, int(ts.shape[0]) - 1
        t0, t1 = ts[0], ts[-1]
    else:
        ctrl, dt0, default_max = controller(steps, rtol, atol, t0, t1)
    t0, t1 = jnp.asarray(t0, tdtype), jnp.asarray(t1, tdtype)
    dt0 = None if dt0 is None else jnp.asarray(dt0, tdtype)
    if default_max is None and max_steps is None:
        raise InvalidArgument("max_steps: a traced number of constant steps needs a static max_steps bound")
    if max_steps is not None:
        check_int(max_steps, "max_steps")
    if isinstance(ctrl, StopAtNonFinite):  # 1e-300 is 0 in float32: the error norm would be 0/0
        for name in ("rtol", "atol"):
            tol = getattr(ctrl, name)
            tiny = float(jnp.finfo(tdtype).tiny)
            check_param(not is_concrete(tol) or float(tol) >= tiny, name,
                        f"{tol} underflows to 0 in {jnp.dtype(tdtype).name}; pass at least {tiny:g} (or enable "
                        f"float64)")
    kwargs = {} if adjoint is None else {"adjoint": adjoint}
    max_steps = default_max if max_steps is None else max_steps
    sol = dfx.diffeqsolve(
        term, solver, t0=t0, t1=t1, dt0=dt0, y0=y0, args=args, stepsize_controller=ctrl,
        saveat=dfx.SaveAt(t1=True), max_steps=max_steps, throw=False, **kwargs,
    )
    y1 = jax.tree_util.tree_map(lambda leaf: leaf[-1], sol.ys)
    y1 = check_solve(y1, sol, t0, t1, max_steps)
    return y1, vf_evals_per_solve(solver, sol.stats["num_steps"]), sol.stats


def check_solve(y1, sol, t0, t1, max_steps: int | None):
    """Return ``y1``; raise the typed error for a diffrax solve that did not succeed (``throw=False``):
    ``NonFiniteError`` where ``StopAtNonFinite`` ended it, ``MaxStepsReached``, else ``RuntimeCheckError``.
    Eagerly the message gives the time the solve reached."""
    span = f"from t = {float(t0):g} to {float(t1):g}" if is_concrete((t0, t1)) else "(traced times)"
    reached = lambda: f"t = {float(sol.ts[-1]):.6g} after {int(sol.stats['num_steps'])} steps"  # noqa: E731
    y1 = check_value(y1, sol.result == NONFINITE_STEP_SIZE,
                     f"the adaptive solve {span} stopped: its next step size was NaN or inf (the error norm was "
                     f"not finite, e.g. rtol/atol too small for the state's precision)", reached, cls=NonFiniteError)
    y1 = check_value(y1, sol.result == NONFINITE_VECTOR_FIELD,
                     f"the solve {span} stopped at its first non-finite step: the vector field (the score, or "
                     f"the model behind it) returned NaN or inf there. Check the score near that time (its "
                     f"parameters, its inputs, the time conditioning)", reached, cls=NonFiniteError)
    y1 = check_value(y1, sol.result == dfx.RESULTS.max_steps_reached,
                     f"the adaptive solve {span} spent its max_steps = {max_steps} steps before its end time: "
                     f"raise max_steps, loosen rtol/atol, or pass steps= for constant steps", reached,
                     cls=MaxStepsReached)
    other = ~dfx.is_okay(sol.result)
    for known in (NONFINITE_STEP_SIZE, NONFINITE_VECTOR_FIELD, dfx.RESULTS.max_steps_reached):
        other = other & (sol.result != known)
    return check_value(y1, other,
                       f"the solve {span} failed in diffrax", reached, cls=RuntimeCheckError)


# packages whose functions read no state of the caller's: a compiled solve over them may be reused
_LIBRARIES = frozenset({"dgjax", "diffrax", "equinox", "jax", "jaxlib", "flax", "optax", "lineax", "optimistix",
                        "galaxygrad", "numpy"})


def retrace_token(static: Any) -> object | None:
    """None when the non-array part of a score or sampler (``equinox.partition``'s static half) holds only
    functions of these libraries, so that a vector field built from it may reuse diffrax's compiled solve
    across calls; else a fresh object, which makes the field unequal to every other (traced anew).

    A function of the caller's (a lambda, a closure) may read arrays that change between calls, which a
    reused program would have frozen as constants; pass the score as a pytree (an equinox module,
    ``dg.external_score``, a loaded model) for the compiled solve to be reused.
    """
    for leaf in jax.tree_util.tree_leaves(static):
        if callable(leaf) and not isinstance(leaf, type):
            module = getattr(leaf, "__module__", None) or type(leaf).__module__ or ""
            if module.split(".")[0] not in _LIBRARIES:
                return object()
    return None


class Rebuild(eqx.Module):
    """The non-array half of a score or sampler (``static``), made whole again from its arrays inside a vector
    field: ``rebuild(params)``. A module, not a closure, so that a vector field holding it compares equal across
    calls and diffrax's compiled solve is reused (``retrace`` is ``retrace_token(static)``)."""

    static: Any
    retrace: object | None

    def __call__(self, params: Any) -> Any:
        return eqx.combine(params, self.static)


def split_args(tree: Any) -> tuple[Any, Rebuild]:
    """(params, rebuild) of what a vector field uses (a score, a model, a sampler, or a tuple of them): params are
    its inexact arrays, to be passed to the solve in ``args`` so that nothing differentiable is closed over
    (diffrax's adjoints differentiate with respect to ``args``; ``BacksolveAdjoint`` rejects closed-over tracers),
    and ``rebuild(params)`` is the tree again."""
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    return params, Rebuild(static, retrace_token(static))


def solve(vector_field: Callable, y0: Any, t0: float | Array, t1: float | Array, **kwargs):
    """Integrate the ODE dy/dt = vector_field(t, y, args) from t0 to t1 (t1 < t0 integrates backward in t).

    Keyword arguments as ``solve_term``; returns (y1, num_vf_evals, stats).
    """
    return solve_term(dfx.ODETerm(vector_field), y0, t0, t1, **kwargs)


def add_nfe(total, evals, per_eval):
    """``total + per_eval * evals`` score evaluations, or -1 once either count is unknown (-1)."""
    total, evals = jnp.asarray(total), jnp.asarray(evals)
    return jnp.where((evals < 0) | (total < 0), -1, total + per_eval * evals)
