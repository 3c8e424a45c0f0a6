"""Denoising a noisy x_t: posterior mean, sample, high-density approximation and the exact posterior
mode by the mode-tracking ODE (docs/math.md section 9; Cartoonists, Thm 5 and Fig. 1).

``dg.denoise`` picks the method: the posterior mean (Tweedie), the mode-tracking ODE (``dg.ModeTracking``,
``dgjax.sampling.mode``, where the mode's ODE is derived), the HD-ODE (docs/math.md 5; the mode's approximation,
exact when p_0 is Gaussian) or a posterior sample (PF-ODE or reverse SDE), all through ``dg.sample``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from . import grids
from ._checks import (
    bcast,
    check_key,
    check_param,
    check_samples,
    check_score_value,
    check_span,
    check_time,
    entry_point,
)
from .divergence import Hutchinson
from .errors import InvalidArgument
from .likelihood import log_likelihood
from .parametrizations import x0_from_score
from .sampling.base import Sample
from .sampling.guidance import HighDensity
from .sampling.mode import ModeTracking
from .sampling.ode import PFODE
from .sampling.sample import sample
from .sampling.sde import ReverseSDE
from .solve import SolveOptions, merge_options

METHODS = ("mean", "mode", "hd", "sample")


# ------------------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------------------
def add_noise(process, x_0: Float[Array, " N *shape"], t: ArrayLike | Float[Array, " N"],
              key) -> Float[Array, " N *shape"]:
    """x_t ~ p(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) (docs/math.md 1).

    Args: x_0 (N, *shape); t scalar or (N,) in [t_min, t_max]; key a PRNG key. Returns x_t like x_0.
    """
    x_0 = check_samples(x_0, "x_0")
    if key is None:
        raise InvalidArgument("key: add_noise needs a PRNG key (key=jax.random.key(...))")
    check_key(key)
    t = check_time(process, jnp.asarray(t, x_0.dtype), "t")
    if t.ndim > 1 or (t.ndim == 1 and t.shape != (x_0.shape[0],)):
        raise InvalidArgument(f"t: must be a scalar or shape ({x_0.shape[0]},); got {t.shape}")
    eps = jax.random.normal(key, x_0.shape, x_0.dtype)
    return bcast(process.alpha(t), x_0) * x_0 + bcast(process.sigma(t), x_0) * eps


def posterior_mean(score: Callable, process, x_t: Float[Array, " N *shape"],
                   t: ArrayLike | Float[Array, " N"]) -> Float[Array, " N *shape"]:
    """Tweedie: ``E[x_0 | x_t] = (x_t + sigma_t^2 s(x_t, t)) / alpha_t`` (docs/math.md 9); one score evaluation.

    x_t (N, *shape), t scalar or (N,). Returns (N, *shape). The score's value must be like x_t (shape and dtype:
    ``dg.InvalidArgument``) and finite (``dg.NonFiniteError``).
    """
    x_t = check_samples(x_t, "x_t")
    t = check_time(process, jnp.asarray(t, x_t.dtype), "t")
    s = check_score_value(score(x_t, t), x_t, "score(x_t, t)")
    return x0_from_score(bcast(process.alpha(t), x_t), bcast(process.sigma(t), x_t), x_t, s)


# ------------------------------------------------------------------------------------------------------
# dg.denoise
# ------------------------------------------------------------------------------------------------------
@entry_point
def denoise(score: Callable, process, x_t: Float[Array, " N *shape"], t: float | Array, *,
            method: str = "mean", t_end=None, key=None,
            track_logp: bool = False, divergence=None, solver=None, steps: int | None = None, grid=None,
            rtol: float | None = None, atol: float | None = None, logp_t=None,
            sampler_kwargs: dict | None = None, adjoint=None, max_steps: int | None = None,
            options: SolveOptions | None = None) -> Sample:
    """Denoise x_t observed at time t down to t_end (default t_min): docs/math.md 9, Cartoonists Fig. 1.

    Methods:
      ``"mean"``: the posterior mean ``E[x_{t_end} | x_t] = alpha_{t_end} E[x_0 | x_t]`` (Tweedie; one score
        evaluation; ``track_logp`` is not offered: measure it with ``dg.log_likelihood``).
      ``"mode"``: the posterior mode by the mode-tracking ODE (``dg.ModeTracking``).
      ``"hd"``: the HD-ODE ``dx/ds = f x - g^2 s`` from t (docs/math.md 5): the mode's cheap approximation.
      ``"sample"``: a posterior sample from x_t: with ``key=None`` the PF-ODE (deterministic), with a key the
        reverse SDE (``dg.ReverseSDE``, Euler-Maruyama; needs ``steps``).

    Args:
      score: ``score(x, t)``; process: the forward process; x_t: (N, *shape); t: the scalar time of x_t, in
        (t_min, t_max]; t_end: a time below t (default t_min).
      key: PRNG key (Hutchinson probes; the SDE's Brownian path for ``"sample"``).
      track_logp: also return log p_{t_end} of the result tracked along the path (docs/math.md 4), started from
        log p_t(x_t) measured by PF-ODE encoding from t to t_max (``dg.log_likelihood(..., t_start=t)``, same
        solver settings; a named grid is placed on [t, t_max] for it, an explicit ``dg.TimesGrid`` cannot be:
        pass ``logp_t`` with one).
      divergence, solver, steps, grid, rtol, atol, adjoint, max_steps, options: as ``dg.sample`` (the grid runs
        from t to t_end).
      logp_t: (N,) log p_t(x_t) to start the tracking from (default: measured as above).
      sampler_kwargs: options of ``dg.ModeTracking`` (cg_steps, cg_tol, check, symmetrize, linear_solver) for
        ``"mode"``.

    Returns: ``dg.Sample`` (for ``"mean"``: nfe 1, num_steps 0, logp None).
    """
    if method not in METHODS:
        raise InvalidArgument(f"method: must be one of {METHODS}; got {method!r}")
    options = merge_options(options, solver=solver, steps=steps, rtol=rtol, atol=atol, adjoint=adjoint,
                            max_steps=max_steps, grid=grid)
    check_key(key)
    if sampler_kwargs and method != "mode":
        raise InvalidArgument(f"sampler_kwargs: options of dg.ModeTracking, used by method='mode' only; got "
                              f"{sorted(sampler_kwargs)} with method={method!r}")
    x_t = check_samples(x_t, "x_t")
    check_param(jnp.ndim(t) == 0, "t", f"must be a scalar time; got shape {jnp.shape(t)}")
    t_end = process.t_min if t_end is None else t_end
    x_t, t, t_end = check_span(process, t, t_end, x_t, names=("t", "t_end"),
                               why="denoising runs from t toward the data")
    if method == "mean":
        if track_logp:
            raise InvalidArgument("track_logp: the posterior mean is not reached along a path; measure its log-density "
                                  "with dg.log_likelihood(score, process, x) instead")
        x = bcast(process.alpha(jnp.asarray(t_end, x_t.dtype)), x_t) * posterior_mean(score, process, x_t, t)
        return Sample(x, None, None, None, jnp.asarray(1), jnp.asarray(0))
    divergence = Hutchinson() if divergence is None else divergence
    k_logp, k_run = (None, None) if key is None else jax.random.split(key)
    if method == "mode":
        sampler = ModeTracking(**(sampler_kwargs or {}))
    elif method == "hd":
        sampler = HighDensity(t_switch=t)
    elif key is None:
        sampler = PFODE()
    else:
        sampler = ReverseSDE()
    if track_logp and logp_t is None:
        if isinstance(grids.as_grid(options.grid), grids.TimesGrid):
            raise InvalidArgument("grid: with track_logp, log p_t(x_t) is measured by encoding from t to t_max, which "
                                  "an explicit grid of times (t to t_end) does not cover: pass logp_t=... or a named "
                                  "grid")
        # the SDE's Euler-Maruyama default is no ODE solver: the encoding then uses the ODE default (Tsit5)
        enc = options.replace(solver=None) if (method == "sample" and key is not None) else options
        logp_t = log_likelihood(score, process, x_t, key=k_logp, divergence=divergence, t_start=t, options=enc).logp
    run_key = k_run if (key is not None) else None
    return sample(score, process, x_t, sampler=sampler, key=run_key, track_logp=track_logp, divergence=divergence,
                  options=options, logp_T=logp_t, t_start=t, t_end=t_end)
