"""The one sampler interface that ODE and SDE samplers share (as diffrax's ``AbstractSolver`` does for solvers).

A sampler is a small immutable ``eqx.Module``, abstract (``AbstractSampler``, ``ODESampler``, ``SDESampler``:
abstract methods, no fields) or final (the samplers themselves: the fields). It declares

- ``cost(track)`` (abstract): its cost, the one way to declare it: ``Cost(divergence_passes, extra_jvps)``;
  one evaluation costs ``1 + divergence_passes * divergence.num_jvps(D) + extra_jvps`` NFE (``nfe_per_eval``);
- ``integrate(score, process, x, *, key, track_logp, divergence, options, logp_T, t_start, t_end)``
  (abstract): the solve from t_start to t_end, returning ``(y, nfe, num_steps)`` with y = x or
  (x, log p per probe (P, N));
- ``prepare(process, x_T)``: the latent it actually starts from (default: unchanged);
- ``per_sample()``: its per-sample parameters, the fields whose leading axis is the batch (e.g. a (N,) q),
  which ``dg.sample_sharded`` pads and shards with x_T (default: none);
- ``checked_range()``: r when ``dg.sample`` must report samples that leave the data range [-r, r]
  (default None: unchecked); ``with_data_range(r)``: the sampler checking the range of the model it
  samples (default: unchanged; guidance samplers take it).

``dg.sample`` (``sampling/sample.py``) and ``dgjax.parallel`` validate the arguments and call these; they
never ask which kind of sampler they have.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
from jaxtyping import Array

from ..divergence import DivergenceEstimator


class Cost(NamedTuple):
    """Score evaluations per vector-field evaluation beyond the one score call: ``divergence_passes`` uses
    of the divergence estimator's probes (each ``divergence.num_jvps(D)`` JVPs) and ``extra_jvps`` JVPs
    (or VJPs): an int, or a function ``D -> int`` for work that grows with the dimension (mode tracking's
    conjugate-gradient Hessian-vector products)."""

    divergence_passes: int = 0
    extra_jvps: int | Callable[[int], int] = 0


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


class AbstractSampler(eqx.Module):
    """Base of every dgjax sampler (deterministic: ``ODESampler``; stochastic: ``SDESampler``): abstract
    ``cost`` and ``integrate``; ``prepare``, ``per_sample`` and ``checked_range`` have defaults (module
    docstring)."""

    @abc.abstractmethod
    def cost(self, track: bool) -> Cost:
        """The sampler's cost per vector-field evaluation (module docstring)."""

    @abc.abstractmethod
    def integrate(self, score, process, x, *, key, track_logp: bool, divergence: DivergenceEstimator, options,
                  logp_T, t_start, t_end) -> tuple[Any, Array, Array]:
        """Solve from ``x`` (already ``prepare``d) at t_start to t_end with the given ``SolveOptions``.

        ``logp_T`` is the (N,) starting log-density when tracking (else None). Returns (y, nfe, num_steps),
        y = x or (x, log p per probe (P, N))."""

    def prepare(self, process, x_T):
        """Transform the starting latent (e.g. rescale it); default: unchanged."""
        return x_T

    def with_data_range(self, data_range: float | None) -> AbstractSampler:
        """This sampler checking its samples against the data range [-r, r] of the model it samples
        (``dg.sample(model, ...)``): guidance samplers override it (unless given their own range); the rest
        keep to the model's data and are returned unchanged."""
        return self

    def per_sample(self) -> tuple[Array, ...]:
        """The sampler's per-sample parameters: its own array fields (return the fields themselves, not values
        computed from them: ``dg.sample_sharded`` replaces them with ``equinox.tree_at``) that may carry one
        row per sample. Those with a leading axis of the batch size N are padded and sharded with x_T by
        ``dg.sample_sharded``; scalars pass through. Default: none."""
        return ()

    def checked_range(self) -> float | None:
        """r when ``dg.sample`` must raise ``dg.LeftDataRange`` for samples that leave the data range [-r, r]
        (more than 1% of the batch's entries beyond 1.05 r); None (default): not checked."""
        return None

    def uses_divergence(self, track: bool) -> bool:
        """Whether the solve needs divergence probes (derived from ``cost``)."""
        return self.cost(track).divergence_passes > 0

    def nfe_per_eval(self, track: bool, divergence: DivergenceEstimator, dim: int) -> int:
        """NFE of one vector-field evaluation: 1 + passes * divergence.num_jvps(D) + extra JVPs."""
        c = self.cost(track)
        extra = c.extra_jvps(dim) if callable(c.extra_jvps) else c.extra_jvps
        return 1 + (c.divergence_passes * divergence.num_jvps(dim) if c.divergence_passes else 0) + extra
