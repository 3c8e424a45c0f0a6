"""Log-likelihood of data by encoding with the PF-ODE, and bits per dimension (docs/math.md section 4).

    log p_{t_min}(x_0) = log p_T(x_T) + int_{t_min}^{T} div u_t(x_t) dt,

with x_T the PF-ODE encoding of x_0. The same augmented vector field as sampling is integrated
forward in time: its log-density state changes by -int div u, so log p_0 = log p_T(x_T) - change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import dynamics as dyn, grids
from ._checks import check_output, check_per_sample, check_samples, check_score_fn, check_span, entry_point
from .divergence import DivergenceEstimator, Hutchinson, StepwiseHutchinson, tracking_start
from .errors import InvalidArgument
from .external import AbstractModel
from .quantization import Quantization
from .sampling.sample import check_common, from_model
from .solve import Rebuild, SolveOptions, add_nfe, merge_options, solve, split_args


class Likelihood(eqx.Module):
    """What ``dg.log_likelihood`` returns: logp (N,) = log p_{t_min}(x0) under the model, its standard
    error across Hutchinson probes (N,), the encoding x_T (N, *shape), the prior term log p_T(x_T) (N,)
    and nfe (score evaluations per sample)."""

    logp: Array
    logp_stderr: Array
    x_T: Array
    logp_T: Array
    nfe: Array


class _EncodingField(eqx.Module):
    """The augmented PF-ODE of the encoding, the score rebuilt from args = (first, params) and ``static``; with
    per-step probes ``first`` is a key and step k's probes are drawn here, else it holds the fixed probes. A
    module, not a closure, so that the compiled solve is reused by the next call (``ode._ODEField``)."""

    rebuild: Rebuild
    process: Any
    divergence: Any
    per_step: bool
    t0: Any
    t1: Any
    plan: Any = eqx.field(static=True)  # the number of steps, or the step times (a tuple: hashable)

    def __call__(self, t, y, args):
        first, params = args
        if self.per_step:
            draw = grids.draw_index(t, self.t0, self.t1, self.plan, self.divergence.draws_per_step)
            probes = self.divergence.draw_step(first, y[0], draw)
        else:
            probes = first
        return dyn.augmented_rate(self.rebuild(params), self.process, y[0], t, self.divergence, probes,
                                  dyn.pf_velocity)


@entry_point
def log_likelihood(score: Callable | AbstractModel, process=None, x0: Float[Array, " N *shape"] | None = None, *,
                   key=None,
                   divergence: DivergenceEstimator | None = None,
                   solver=None, steps: int | None = None, rtol: float | None = None, atol: float | None = None,
                   prior_log_prob: Callable | None = None, adjoint=None, max_steps: int | None = None,
                   grid=None, encoder: str = "ode", t_start: float | Array | None = None,
                   options: SolveOptions | None = None) -> Likelihood:
    """Model log-density of data ``x0`` (N, *shape), taken at t_start (default t_min), by PF-ODE encoding to t_max.

    Args mirror ``dg.sample`` (``grid``: where the constant steps go, see ``dgjax.grids``; ``options``: a
    ``dg.SolveOptions`` whose fields the keywords given override); a model in place of (score, process):
    ``dg.log_likelihood(model, x0, ...)`` (log p in the model's network space). ``t_start``: the time of ``x0``
    (a scalar below t_max; ``dg.denoise`` measures log p_t(x_t) with it).
    ``prior_log_prob(x_T) -> (N,)`` defaults to ``process.prior_log_prob`` (another shape: ``dg.InvalidArgument``;
    NaN or -inf: ``dg.NonFiniteError``, under either encoder).
    ``encoder="sde"``: encode with the forward SDE instead (docs/math.md 4(e), ``dgjax.forward``): Euler-Maruyama in
    ``steps`` constant steps with any divergence estimator; unbiased over the Brownian path, noisy per path
    (``key`` required; ``logp_stderr`` is the spread across probes only).
    """
    score, process, x0, _ = from_model(score, process, x0, "x0")
    if encoder not in ("ode", "sde"):
        raise InvalidArgument(f"encoder: must be 'ode' (PF-ODE) or 'sde' (forward SDE); got {encoder!r}")
    options = merge_options(options, solver=solver, steps=steps, rtol=rtol, atol=atol, adjoint=adjoint,
                            max_steps=max_steps, grid=grid)
    if divergence is None:  # the measured default (docs/likelihood.md): per-step probes under constant steps
        constant = encoder == "ode" and (options.steps is not None or options.grid is not None)
        divergence = StepwiseHutchinson() if constant else Hutchinson()
    per_step = isinstance(divergence, StepwiseHutchinson)
    check_common(divergence, key, options)
    t0, t1 = (process.t_min if t_start is None else t_start), process.t_max
    if encoder == "sde":
        from .forward import sde_log_likelihood
        if options.solver is not None or options.rtol is not None or options.atol is not None:
            raise InvalidArgument("encoder: 'sde' uses Euler-Maruyama with constant steps; drop solver/rtol/atol")
        return Likelihood(*sde_log_likelihood(score, process, x0, key=key, divergence=divergence,
                                              prior_log_prob=prior_log_prob, t_start=t0, options=options))
    x0 = check_samples(x0, "x0")
    x0, t0, t1 = check_span(process, t0, t1, x0, names=("t_start", "t_max"),
                            why="encoding runs from the data to the noise", decreasing=False)
    if per_step and options.steps is None and options.grid is None:
        raise InvalidArgument("divergence: dg.StepwiseHutchinson redraws its probes at every constant step; pass "
                              "steps=... (or grid=...), or use dg.Hutchinson() with an adaptive rtol/atol")
    steps, ts = grids.plan(process, t0, t1, options.steps, options.grid)  # validate the grid before drawing probes
    check_score_fn(score, x0, jnp.asarray(t0, dtype=x0.dtype))
    probes, change0 = tracking_start(divergence, key, x0)
    y0 = (x0, change0)
    # through args: every adjoint differentiates w.r.t. the score's params
    params, rebuild = split_args(score)
    plan = (tuple(float(v) for v in np.asarray(ts)) if ts is not None else steps) if per_step else None
    vf = _EncodingField(rebuild, process, divergence, per_step, t0, t1, plan)
    (x_T, change), evals, _ = solve(vf, y0, t0, t1, args=(key if per_step else probes, params), options=options,
                                    steps=steps, grid=ts)
    x_T, change = check_output((x_T, change), "dg.log_likelihood: the PF-ODE encoding solve")
    prior = process.prior_log_prob if prior_log_prob is None else prior_log_prob
    logp_T = check_per_sample(prior(x_T), x0.shape[0], "prior_log_prob(x_T)")
    logp_T = check_output(logp_T, "dg.log_likelihood: the prior term log p_T(x_T)")
    logp, stderr = dyn.mean_and_stderr(logp_T[None, :] - change)
    nfe = add_nfe(0, evals, 1 + divergence.num_jvps(x0[0].size))
    return Likelihood(logp, stderr, x_T, logp_T, nfe)


def bits_per_dim(logp: Float[ArrayLike, " *N"], shape, offset_bits: float | Quantization | None = None
                 ) -> Float[Array, " *N"]:
    """bits/dim = -log p(x) / (D ln 2) + offset_bits, D = prod(shape).

    ``shape``: the per-sample event shape (``x.shape[1:]``, without the batch axis), or D as an int. (A shape
    that includes the batch axis cannot be told apart from an event shape, e.g. 8 digits of shape (8, 8, 1).)

    ``offset_bits``: a ``dg.Quantization`` (the offset is its ``offset_bits = log2(levels / (high - low))``,
    docs/math.md 4), a number of bits, or None: 8-bit data on [-1, 1), ``dg.Quantization(256)``, 7 bits (x = 2 (y + u)
    / 256 - 1: the Jacobian of y + u -> x is (1/128)^D). Data sets declare theirs (``Dataset.quantization``;
    None for continuous data, where the offset is 0: bits/dim of x itself).
    """
    if offset_bits is None:
        offset_bits = Quantization().offset_bits
    elif isinstance(offset_bits, Quantization):
        offset_bits = offset_bits.offset_bits
    logp = jnp.asarray(logp)
    not_a_shape = f"shape: must be the per-sample event shape, a tuple of ints (or D, an int); got {shape!r}"
    if isinstance(shape, bool):
        raise InvalidArgument(not_a_shape)
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)  # D itself: never mistaken for a shape with the batch axis
    else:
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise InvalidArgument(not_a_shape) from None
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise InvalidArgument(f"shape: must be the per-sample event shape (D = prod(shape) >= 1, without the batch "
                              f"axis); got {shape}")
    d = math.prod(shape)
    return -logp / (d * math.log(2.0)) + offset_bits
