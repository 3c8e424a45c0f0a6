"""``dg.sample``: validate, ``prepare`` the latent, and hand the solve to the sampler (``base.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import dynamics as dyn
from .._checks import (
    check_finite,
    check_int,
    check_key,
    check_param,
    check_per_sample,
    check_samples,
    check_score_fn,
    check_span,
    check_value,
    entry_point,
    is_concrete,
)
from ..divergence import DivergenceEstimator, Hutchinson
from ..errors import InvalidArgument, LeftDataRange
from ..external import AbstractModel
from ..processes import Process
from ..solve import SolveOptions, merge_options
from .base import AbstractSampler, Sample
from .ode import PFODE


@entry_point
def sample(score: Callable | AbstractModel, process=None, x_T: Float[Array, " N *shape"] | None = None, *,
           sampler: AbstractSampler | None = None,
           key=None, track_logp: bool = False, divergence: DivergenceEstimator | None = None, solver=None,
           steps: int | None = None, rtol: float | None = None, atol: float | None = None, logp_T=None,
           t_start: float | Array | None = None, t_end: float | Array | None = None, adjoint=None,
           max_steps: int | None = None, grid=None, options: SolveOptions | None = None) -> Sample:
    """Integrate a sampler from ``x_T`` at t_start (default t_max) down to t_end (default t_min).

    Args:
      score: pure ``score(x (N, *shape), t) -> like x``; or a model (``dg.TrainedModel``, ``dg.GalaxyModel``):
        ``dg.sample(model, x_T, ...)`` samples with the model's score and process, and guidance samplers
        check its data range (``model.data_range``: leaving it raises ``dg.LeftDataRange``).
      process: the forward process (``dg.VP()`` etc.); omitted with a model.
      x_T: (N, *shape) starting latents (finite).
      sampler: ``dg.PFODE()`` (default), ``dg.ODE(drift)``, a guidance sampler, or a stochastic one
        (``dg.ReverseSDE()``, ``dg.SDE(drift, diffusion)``, ``dg.StochasticDensityGuidance(q, noise)``).
      key: PRNG key; needed for Hutchinson probes when tracking (one key per sample is split from it)
        and for the Brownian path of stochastic samplers.
      track_logp: integrate log p_t(x_t) along the path (docs/math.md 4) and return it in ``Sample.logp``.
      divergence: ``dg.Hutchinson(num_probes=1)`` (default) or ``dg.Exact()``.
      solver: any diffrax ODE solver (default ``diffrax.Tsit5()``); for SDE samplers ``diffrax.Euler()``
        (Euler-Maruyama, the default) or a Stratonovich solver where the sampler allows it.
      steps: number of constant steps; or ``rtol``/``atol`` for the adaptive PID controller
        (default adaptive, rtol = atol = 1e-5).
      grid: where the constant steps go (``dgjax.grids``): ``dg.UniformGrid()`` ("t"), ``dg.LogSNRGrid()``
        ("log_snr"), ``dg.EDMGrid(rho=7)`` ("edm"), or ``dg.TimesGrid(times)`` (an array of times) from t_start to
        t_end (then ``steps`` may be omitted); default the process's ``default_grid``.
        Every phase of a multi-phase sampler uses its part of the one grid (the switch time added).
      logp_T: (N,) log-density of x_T to start from, or a callable ``logp_T(x) -> (N,)`` evaluated at the
        latent the sampler actually starts from (after ``sampler.prepare``, e.g. the median rescaling of
        density guidance); default the prior ``process.prior_log_prob``, which is p_{t_max}: with track_logp
        and t_start below t_max, logp_T is required (``dg.InvalidArgument``).
      adjoint: a diffrax adjoint for gradients (default: diffrax's recursive checkpointing).
      max_steps: the solve's step bound (default: ``steps`` for constant steps, 16384 for adaptive ones).
      options: a ``dg.SolveOptions`` with the solve settings above in one object (solver, steps, rtol, atol,
        adjoint, max_steps, grid); a keyword given here (not None) overrides its field.

    Returns: ``dg.Sample`` (x, logp, logp_T, logp_stderr, nfe, num_steps). Errors are typed
    (``dgjax.errors``): infeasible density guidance raises ``dg.InfeasibleGuidance``, samples leaving the
    sampler's data range ``dg.LeftDataRange``, a NaN/inf ``dg.NonFiniteError``, an exhausted adaptive
    step budget ``dg.MaxStepsReached`` (under your own ``jax.jit``, wrap the call in
    ``dg.errors.typed_errors()`` to get these classes back).
    """
    sampler = PFODE() if sampler is None else sampler
    if not isinstance(sampler, AbstractSampler):
        raise InvalidArgument(f"sampler: expected a dgjax sampler such as dg.PFODE(); got {sampler!r}")
    score, process, x_T, data_range = from_model(score, process, x_T, "x_T")
    if data_range is not None:
        sampler = sampler.with_data_range(data_range)
    divergence = Hutchinson() if divergence is None else divergence
    options = merge_options(options, solver=solver, steps=steps, rtol=rtol, atol=atol, adjoint=adjoint,
                            max_steps=max_steps, grid=grid)
    check_common(divergence, key, options)
    x_T = check_samples(x_T, "x_T")
    start_given = t_start is not None
    t_start = process.t_max if t_start is None else t_start
    t_end = process.t_min if t_end is None else t_end
    x_T, t_start, t_end = check_span(process, t_start, t_end, x_T, names=("t_start", "t_end"),
                                     why="sampling runs from noise to data")
    check_score_fn(score, x_T, jnp.asarray(t_start, dtype=x_T.dtype))
    if track_logp and logp_T is None and start_given and is_concrete(jnp.asarray(t_start)) \
            and float(t_start) != float(process.t_max):
        # the default start, the prior's log-density, is log p_{t_max}: at another t_start it is not p_{t_start}
        # (a traced t_start cannot be told apart from t_max before the run; the default t_start is t_max)
        raise InvalidArgument(f"logp_T: track_logp from t_start = {t_start} (not t_max = {process.t_max}) needs "
                              f"the log-density there: pass logp_T = log p_t_start(x_T) ((N,) or a callable; e.g. "
                              f"dg.log_likelihood's encoding from t_start, or the oracle's), since the default "
                              f"prior N(0, sigma_T^2 I) is p at t_max only")
    x = sampler.prepare(process, x_T)
    logp0 = initial_logp(process, x, logp_T) if track_logp else None
    y, nfe, num_steps = sampler.integrate(score, process, x, key=key, track_logp=track_logp,
                                          divergence=divergence, options=options, logp_T=logp0,
                                          t_start=t_start, t_end=t_end)
    return _check_range(sampler, make_sample(y, logp0, nfe, num_steps, track_logp))


def from_model(score, process, x, name: str) -> tuple[Callable, Process, Any, float | None]:
    """(score, process, x, data_range) from ``f(model, x, ...)`` or ``f(score, process, x, ...)``.

    A model (``AbstractModel``) stands for its score and process; its data range (None when unbounded) goes to
    guidance samplers."""
    if isinstance(score, AbstractModel):
        if x is None and not isinstance(process, Process):  # f(model, x)
            process, x = None, process
        check_param(process is None or process == score.process, "process",
                    f"a model brings its own process ({score.process!r}); omit process or pass that one; got "
                    f"{process!r}")
        if x is None:
            raise InvalidArgument(f"{name}: missing: pass the batch after the model")
        return score.score, score.process, x, score.data_range
    if x is None:
        raise InvalidArgument(f"{name}: missing: pass score, process and the batch (or a model and the batch)")
    if not isinstance(process, Process):
        raise InvalidArgument(f"process: expected a dgjax process such as dg.VP(); got {process!r}")
    return score, process, x, None


def check_common(divergence, key, options: SolveOptions) -> None:
    """Eager checks of the arguments shared by dg.sample and dg.log_likelihood (issue 15)."""
    if not isinstance(divergence, DivergenceEstimator):
        raise InvalidArgument(f"divergence: expected dg.Hutchinson(num_probes) or dg.Exact(); got {divergence!r}")
    check_key(key)
    if options.steps is not None and not isinstance(options.steps, jax.core.Tracer):
        check_int(options.steps, "steps")  # before the step count is split between phases
    for name, tol in (("rtol", options.rtol), ("atol", options.atol)):
        if tol is not None and not isinstance(tol, jax.core.Tracer):
            check_param(isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < float("inf"),
                        name, f"must be a finite positive number; got {tol!r}")


def _check_range(sampler: AbstractSampler, out: Sample) -> Sample:
    """When the sampler declares a data range (``sampler.checked_range()``: data in [-r, r]), raise if more
    than 1% of all entries of the batch lie beyond 1.05 r: the guidance has left the data (issue 15). (A
    trained model's own samples at q = 0.5 put a few pixels slightly beyond +-1, hence the margin and the 1%.)"""
    r = sampler.checked_range()
    if r is None:
        return out
    x = out.x
    frac = jnp.mean(jnp.abs(x) > 1.05 * r)
    msg = (f"{type(sampler).__name__}: the samples left the data range [-{r:g}, {r:g}] (more than 1% of their "
           f"entries beyond +-{1.05 * r:g}): the guidance pushed them off the data, and their log p is not a "
           f"density of data. Move q toward 0.5 (or make the rate push less), or pass data_range=None to accept it")
    return eqx.tree_at(lambda o: o.x, out, check_value(x, frac > 0.01, msg, cls=LeftDataRange))


def initial_logp(process, x, logp_T):
    """log p_T at the starting latent: the prior by default, an (N,) array, or a callable of x."""
    n = x.shape[0]
    if logp_T is None:
        logp_T = process.prior_log_prob(x)
    elif callable(logp_T):
        logp_T = check_per_sample(logp_T(x), n, "logp_T(x)")
    else:
        logp_T = check_per_sample(logp_T, n, "logp_T")
    return check_finite(logp_T.astype(x.dtype), "logp_T")


def make_sample(y, logp_T, nfe, num_steps, track_logp) -> Sample:
    if track_logp:
        x_out, logp_probes = y
        logp, stderr = dyn.mean_and_stderr(logp_probes)
        return Sample(x_out, logp, logp_T, stderr, nfe, num_steps)
    return Sample(y, None, None, None, nfe, num_steps)


