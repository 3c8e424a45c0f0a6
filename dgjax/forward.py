"""Log-density along the forward SDE (docs/math.md section 4(e); Cartoonists, Thm 2), and the stochastic
encoder of ``dg.log_likelihood(..., encoder="sde")``.

Along the forward SDE dx = f x dt + g dW (data to noise, forward time t):

    d log p_t(x_t) = [ -f D + g^2 Lap + 1/2 g^2 |s|^2 ] dt + g s . dW,

so with r_t the tracked log-density, ``r_T - r_{t0} = int`` of the right-hand side along the path; the same
Brownian increment moves x and r (one diffrax solve, Euler-Maruyama, constant steps). Lap comes from any
divergence estimator (``dg.Exact()`` or ``dg.Hutchinson(K)``, probes held fixed along the path): one score
evaluation plus the estimator's JVPs per step. Encoder: ``log p_{t_min}(x_0) = log p_T(x_T) - (r_T - r_{t_min})``,
unbiased in expectation over the path (the dW term has mean zero) but with a path-dependent spread; Euler-
Maruyama has strong order 1/2 here (docs/math.md 4(c) numerics), so use many steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import dynamics as dyn, grids
from ._checks import (
    batch_dot,
    bcast,
    check_int,
    check_key,
    check_output,
    check_per_sample,
    check_samples,
    check_score_fn,
    check_span,
    entry_point,
    event_dim,
)
from .divergence import DivergenceEstimator, Hutchinson, tracking_start
from .errors import InvalidArgument
from .sampling.brownian import brownian_path, default_adjoint
from .sampling.sde import _AugmentedSDETerm
from .solve import Rebuild, SolveOptions, add_nfe, merge_options, solve_term, split_args


class ForwardTrack(eqx.Module):
    """What ``forward_sde_logp`` returns: x_T (N, *shape) the end of the forward path, change (N,) the
    tracked r_{t_end} - r_{t_start} (mean over probes), change_stderr (N,) across probes, nfe per sample."""

    x_T: Array
    change: Array
    change_stderr: Array
    nfe: Array


def forward_rates(coeffs, s, lap, dim: int):
    """dt-drift of log p along the forward SDE, -f D + g^2 Lap + 1/2 g^2 |s|^2 (docs/math.md 4(e)); lap (P, N)."""
    return -coeffs.f * dim + coeffs.g2 * lap + 0.5 * coeffs.g2 * batch_dot(s, s)[None, :]


class _ForwardCoefficients(eqx.Module):
    """The forward SDE's drift f x, the tracked rates (docs/math.md 4(e)) and the noise coefficients (g, s), the
    score rebuilt from args = (probes, params) and ``static`` (as ``sampling.ode._ODEField``)."""

    rebuild: Rebuild  # of (score, divergence)
    process: Any
    dim: int

    def __call__(self, t, y, args):
        probes, params = args
        score, divergence = self.rebuild(params)
        xx = y[0]
        coeffs = self.process.coefficients_like(t, xx)
        s, lap = dyn.score_and_laplacian(score, xx, t, divergence, probes)
        return bcast(coeffs.f, xx) * xx, forward_rates(coeffs, s, lap, self.dim), (jnp.sqrt(coeffs.g2), s)


def _forward_increment(vf, dt, dw, track):
    """(dx, d r) of one Euler-Maruyama step; r's noise uses x's own dW."""
    a_x, a_l, (g, s) = vf
    gdw = g * dw
    return a_x * dt + gdw, a_l * dt + batch_dot(s, gdw)[None, :]


@entry_point
def forward_sde_logp(score: Callable, process, x: Float[Array, " N *shape"], *, key, steps: int | None = None,
                     divergence: DivergenceEstimator | None = None,
                     t_start=None, t_end=None, brownian: str = "auto", grid=None, adjoint=None,
                     max_steps: int | None = None, options: SolveOptions | None = None) -> ForwardTrack:
    """Run the forward SDE from x at t_start (default t_min) to t_end (default t_max) with Euler-Maruyama in
    ``steps`` constant steps, tracking the change of log p_t(x_t) by docs/math.md 4(e).

    Args: score ``score(x, t)``; x (N, *shape); key (Brownian path and probes); steps >= 1 (or the length of an
    explicit grid); divergence ``dg.Hutchinson()`` (default) or ``dg.Exact()``; brownian ``"auto"`` (default:
    ``"steps"``, one key per step), ``"unsafe"`` or ``"virtual"`` (``dgjax/sampling/brownian.py``); grid, adjoint,
    max_steps, options as ``dg.sample`` (the solver is Euler-Maruyama: ``solver`` may only be ``diffrax.Euler()``,
    and the steps are constant, so no rtol/atol; default grid uniform in t).
    Returns ``ForwardTrack``. NFE per sample: steps * (1 + the estimator's JVPs).
    """
    options = merge_options(options, steps=steps, grid=grid, adjoint=adjoint, max_steps=max_steps)
    if options.rtol is not None or options.atol is not None:
        raise InvalidArgument("rtol: the forward SDE takes constant Euler-Maruyama steps (steps=...); drop rtol/atol")
    if options.solver is not None and not isinstance(options.solver, dfx.Euler):
        raise InvalidArgument(f"solver: the forward SDE is integrated with Euler-Maruyama (diffrax.Euler()); got "
                              f"{options.solver!r}")
    if key is None:
        raise InvalidArgument("key: the forward SDE needs a PRNG key (key=jax.random.key(...)) for its Brownian path")
    check_key(key)
    divergence = Hutchinson() if divergence is None else divergence
    x = check_samples(x, "x")
    t_start = process.t_min if t_start is None else t_start
    t_end = process.t_max if t_end is None else t_end
    x, t_start, t_end = check_span(process, t_start, t_end, x, names=("t_start", "t_end"),
                                   why="the forward SDE runs from data to noise", decreasing=False)
    # constant steps, uniform in t unless a grid is given (the Brownian path is keyed on the steps)
    if options.steps is None and not isinstance(grids.as_grid(options.grid), grids.TimesGrid):
        raise InvalidArgument("steps: the forward SDE takes constant Euler-Maruyama steps: pass steps=... (e.g. 1000)")
    steps, ts = grids.plan(process, t_start, t_end, options.steps, "t" if options.grid is None else options.grid)
    if ts is not None:
        steps = len(ts) - 1
    steps = check_int(steps, "steps")
    check_score_fn(score, x, jnp.asarray(t_start, x.dtype))
    k_bm, k_probe = jax.random.split(key)
    probes, change0 = tracking_start(divergence, k_probe, x)
    dim = event_dim(x)
    # the path's steps are the solve's: [t_start, t_end] in `steps` steps (or the grid's), one key each
    path = brownian_path(brownian, k_bm, x.shape, x.dtype, float(t_end) - float(t_start), steps, knots=ts,
                         t0=float(t_start))

    params, rebuild = split_args((score, divergence))  # through args, as in dg.sample
    coeff_fn = _ForwardCoefficients(rebuild, process, dim)
    term = _AugmentedSDETerm(coeff_fn, _forward_increment, path, True)
    y0 = (x, change0)
    (x_T, change), evals, _ = solve_term(term, y0, t_start, t_end, args=(probes, params), options=options,
                                         solver=dfx.Euler(), steps=None if ts is not None else steps, grid=ts,
                                         adjoint=default_adjoint(path, options.adjoint))
    x_T, change = check_output((x_T, change), "dg.forward_sde_logp: the forward-SDE solve")
    mean, se = dyn.mean_and_stderr(change)
    nfe = add_nfe(0, evals, 1 + divergence.num_jvps(dim))
    return ForwardTrack(x_T, mean, se, nfe)


def sde_log_likelihood(score: Callable, process, x0, *, key, divergence=None, prior_log_prob: Callable | None = None,
                       t_start=None, options: SolveOptions):
    """log p_{t_start}(x0) by the stochastic encoder: ``log p_T(x_T) - (r_T - r_{t_start})`` along one forward-SDE
    path (docs/math.md 4(e)). Returns (logp (N,), stderr across probes (N,), x_T, logp_T (N,), nfe)."""
    tr = forward_sde_logp(score, process, x0, key=key, divergence=divergence, t_start=t_start, options=options)
    prior = process.prior_log_prob if prior_log_prob is None else prior_log_prob
    logp_T = check_per_sample(prior(tr.x_T), x0.shape[0], "prior_log_prob(x_T)")
    logp_T = check_output(logp_T, "dg.log_likelihood(encoder='sde'): the prior term log p_T(x_T)")
    return logp_T - tr.change, tr.change_stderr, tr.x_T, logp_T, tr.nfe
