"""Guidance on the ODE (docs/math.md section 5): density guidance, prior guidance, the high-density sampler
and the typicality statistic.

    DG-ODE, custom rate b_t(x):   v = u + (div u + b) / |s|^2 * s        =>  d/dt log p_t(x_t) = b
    DG-ODE, quantile q:           v = f x - 1/2 g^2 eta s,  eta = 1 + sqrt(2D) Phi^{-1}(q) / |sigma s|^2
                                  (b^q = -div u - 1/2 g^2 sqrt(2D) Phi^{-1}(q) / sigma^2; div u cancels,
                                  so one score evaluation per step, like the PF-ODE)
    HD-ODE:                       v = f x - g^2 s                        (after t_switch)
    typicality:                   h_t(x) = sigma^2 (Lap + |s|^2) / sqrt(2D)

q means the same everywhere in dgjax: the quantile of log-density; q > 0.5 raises log p (smoother, less
detail), q < 0.5 lowers it (more detail), q = 0.5 is the median behaviour.

Log-density tracking (``dg.sample(..., track_logp=True)``) uses the generic rate of docs/math.md 4(b),
``-div u + s . (v - u)``, which for these drifts equals the known rate b exactly (up to the |s| floor
below), so the reported log p is the one the guidance prescribes, integrated along the actual path.

Numerical guard (docs/math.md 7). The coefficient of s in the guidance correction, ``(div u + b) / |s|^2``
(quantile form: ``eta - 1 = sqrt(2D) Phi^{-1}(q) / |sigma s|^2``), has its denominator floored so that it
never exceeds ``COEF_CAP = 1e12`` in magnitude; an exactly-zero score therefore gives a finite velocity,
never a NaN.

Feasibility (docs/math.md 5). Upward guidance (b above the PF-ODE rate -div u) moves x toward a mode of p_t;
once the remaining log-density head-room is used up, |s| -> 0, eta blows up and the path is meaningless.
The head-room left at x is bounded above by ``1/2 c_max |s|^2`` (exact for a Gaussian: 1/2 s^T C s, C the
local covariance), with ``c_max = alpha_t^2 data_scale^2 + sigma_t^2`` an upper bound on the local
variance (data_scale bounds the per-dimension standard deviation of the data; 1 for data in [-1, 1]).
The guidance demands ``kappa = -2 sigma^2 / g^2 (div u + b)`` nats per unit of log-SNR (quantile form:
``kappa = sqrt(2D) Phi^{-1}(q)``). At every evaluation dgjax checks

    c_max |s|^2  >=  feasibility_tol * kappa          (only where kappa > 0, i.e. upward)

and otherwise raises a runtime error (``equinox.error_if``, also under jit) naming the cause: the head-room
is less than what ``feasibility_tol`` units of log-SNR of guidance require. At high noise (c_max ~ sigma^2)
this is docs/math.md 5's test "|sigma s|^2 small against sqrt(2D)|Phi^{-1}(q)|"; the alpha^2 data_scale^2 term
keeps it from firing at low noise on feasible paths, where |sigma s|^2 -> sum_i sigma^2/c_i -> 0 although
the head-room (about D/2) is intact. ``feasibility_tol=0`` disables the check (the floor still applies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax.scipy.special import gammainc, gammaincc, ndtri
from jaxtyping import Array, Float
from scipy import stats

from .. import dynamics as dyn
from .._checks import (
    batch_dot,
    bcast,
    check_nonfinite,
    check_param,
    check_samples,
    check_time,
    check_value,
    checked_shape,
    event_dim,
    is_concrete,
)
from ..divergence import DivergenceEstimator, Hutchinson
from ..errors import INFEASIBLE_MSG as _INFEASIBLE_MSG, InfeasibleGuidance, InvalidArgument
from .ode import ODESampler

COEF_CAP = 1e12
"""Largest magnitude of the guidance coefficient multiplying s (the |s|^2 floor); see the module docstring."""


# ------------------------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------------------------
def _check_q(q, name: str = "q"):
    """q as a float array in (0, 1): eagerly when concrete, with ``equinox.error_if`` when traced."""
    if q is None or isinstance(q, (str, bytes, bool)):
        raise InvalidArgument(f"{name}: must be a number (or (N,) array) in (0, 1); got {q!r}")
    q = jnp.asarray(q)
    if not (jnp.issubdtype(q.dtype, jnp.floating) or jnp.issubdtype(q.dtype, jnp.integer)):
        raise InvalidArgument(f"{name}: must be a number (or (N,) array) in (0, 1); got dtype {q.dtype}")
    if not jnp.issubdtype(q.dtype, jnp.floating):
        q = q.astype(float)
    if q.ndim > 1:
        raise InvalidArgument(f"{name}: must be a scalar or a per-sample (N,) array; got shape {q.shape}")
    bad = jnp.any(~((q > 0) & (q < 1)))  # also catches NaN
    msg = f"{name} must lie strictly inside (0, 1) (a quantile of log-density; 0.5 is the median)"
    return check_value(q, bad, msg, lambda: np.asarray(q))


def _q_for_batch(q, x):
    """Broadcast a scalar or (N,) q against the batch of x; checks the (N,) length."""
    if q.ndim == 1 and q.shape[0] != x.shape[0]:
        raise InvalidArgument(f"q: a per-sample q must have shape ({x.shape[0]},) like the batch; got {q.shape}")
    return q.astype(x.dtype)


def _floored_coef(num, den):
    """num / den with den floored so that |result| <= COEF_CAP (and 0 when num = 0): never NaN or inf."""
    tiny = jnp.finfo(den.dtype).tiny
    return num / jnp.maximum(den, jnp.maximum(jnp.abs(num) / COEF_CAP, tiny))


def _check_feasible(v, coeffs, s_sq, kappa, data_scale: float, tol: float):
    """Attach the feasibility check (module docstring) to the velocity ``v``."""
    if tol <= 0:
        return v
    alpha, sigma, _, _ = coeffs
    c_max = alpha**2 * data_scale**2 + sigma**2
    bad = (kappa > 0) & (c_max * s_sq < tol * kappa)
    return check_value(v, jnp.any(bad), _INFEASIBLE_MSG, cls=InfeasibleGuidance)


def _chi_ppf_jax(p, dim: int):
    """chi.ppf(p, dim) in JAX for a traced p of any shape: for each entry, the root u = log(r^2 / 2) of
    ``log P(D/2, e^u) - log p`` (lower tail, p <= 1/2) or ``log Q(D/2, e^u) - log(1 - p)`` (upper tail), which
    is close to linear in u in both tails, by ``optimistix.Newton`` from the Wilson-Hilferty start; the
    gradient in p by the implicit function theorem (optimistix's ImplicitAdjoint)."""
    a = 0.5 * dim
    p = jnp.asarray(p)
    k = float(dim)
    y0 = 0.5 * k * jnp.maximum(1 - 2 / (9 * k) + ndtri(p) * jnp.sqrt(2 / (9 * k)), 1e-3) ** 3

    def residual(u, p_i):
        y = jnp.exp(u)
        lower = jnp.log(gammainc(a, y)) - jnp.log(p_i)
        upper = jnp.log(gammaincc(a, y)) - jnp.log1p(-p_i)
        return jnp.where(p_i <= 0.5, lower, -upper)

    def root(p_i, u0):
        return optx.root_find(residual, optx.Newton(rtol=1e-10, atol=1e-10), u0, p_i, max_steps=64,
                              throw=False).value

    u0 = jax.lax.stop_gradient(jnp.log(y0))
    u = jax.vmap(root)(p.reshape(-1), u0.reshape(-1)).reshape(p.shape)
    return jnp.sqrt(2.0 * jnp.exp(u))


def chi_radius(q, dim: int):
    """chi.ppf(q, df=dim): scipy (float64) when q is concrete, a differentiable JAX solve when traced."""
    if is_concrete(q):
        return jnp.asarray(stats.chi.ppf(np.asarray(q, dtype=np.float64), df=dim))
    return _chi_ppf_jax(q, dim)


def prior_radius(process, q, dim: int):
    """The latent radius of prior guidance at quantile q (docs/math.md 5): ``sigma_T chi.ppf(1 - q, df=D)``; q = 0.5 is
    the median radius density guidance starts from. q scalar or (N,)."""
    return process.sigma(process.t_max) * chi_radius(1.0 - q, dim)


def _rescale(x_T, radius):
    """Rescale each row of x_T to the given norm (scalar or (N,))."""
    norm = jnp.sqrt(batch_dot(x_T, x_T))
    # a zero row has no direction to rescale along (it would become NaN)
    norm = check_value(norm, jnp.any(norm <= 0), "x_T: some row is all zeros; rescaling a latent to a radius "
                       "needs a nonzero row (draw x_T from the prior, e.g. process.prior_sample(key, (N, *shape)))")
    return x_T * bcast(jnp.asarray(radius, x_T.dtype) / norm, x_T)


# ------------------------------------------------------------------------------------------------------
# the density-guidance formulas (public: used by the samplers, the stochastic version, the CLI, scripts)
# ------------------------------------------------------------------------------------------------------
def quantile_velocity(coeffs, x: Float[Array, " N *shape"], s: Float[Array, " N *shape"], q, *, data_scale: float = 1.0,
                      feasibility_tol: float = 1.0) -> Float[Array, " N *shape"]:
    """DG-ODE velocity, quantile form (docs/math.md 5): ``v = f x - 1/2 g^2 eta s``,
    ``eta = 1 + sqrt(2D) Phi^{-1}(q) / |sigma s|^2`` (floored, module docstring), with the feasibility check.

    coeffs: ``process.coefficients(t)``; x, s: (N, *shape); q: scalar or (N,). Returns dx/dt like x.
    """
    _, sigma, f, g2 = coeffs
    k = math.sqrt(2 * event_dim(x)) * ndtri(_q_for_batch(jnp.asarray(q), x))  # sqrt(2D) Phi^{-1}(q)
    s_sq = batch_dot(s, s)
    eta = 1.0 + _floored_coef(k, sigma**2 * s_sq)
    v = bcast(f, x) * x - 0.5 * bcast(g2, x) * bcast(eta, x) * s
    return _check_feasible(v, coeffs, s_sq, jnp.broadcast_to(k, s_sq.shape), data_scale, feasibility_tol)


def rate_velocity(coeffs, x: Float[Array, " N *shape"], s: Float[Array, " N *shape"], div_u: Float[Array, " N"],
                  b: Float[Array, " N"], *, data_scale: float = 1.0,
                  feasibility_tol: float = 1.0) -> Float[Array, " N *shape"]:
    """DG-ODE velocity for a custom rate b (N,) (docs/math.md 5): ``v = u + (div u + b) / |s|^2 s``, so that
    d/dt log p_t(x_t) = b; ``div_u`` (N,) is the PF-ODE divergence at (x, t). Returns dx/dt like x."""
    _, sigma, _, g2 = coeffs
    excess = div_u + b.astype(x.dtype)  # (N,)
    s_sq = batch_dot(s, s)
    v = dyn.pf_drift(coeffs, x, s) + bcast(_floored_coef(excess, s_sq), x) * s
    kappa = -2.0 * sigma**2 / g2 * excess
    return _check_feasible(v, coeffs, s_sq, kappa, data_scale, feasibility_tol)


def log_density_shift(process, q, dim: int, t_start=None, t_end=None):
    """The log-density offset the quantile form adds over [t_end, t_start] relative to q = 0.5 (docs/math.md 5):
    ``1/2 (lambda(t_end) - lambda(t_start)) sqrt(2D) Phi^{-1}(q)`` (defaults: the process's full range)."""
    t_start = process.t_max if t_start is None else t_start
    t_end = process.t_min if t_end is None else t_end
    dlam = process.log_snr(t_end) - process.log_snr(t_start)
    return 0.5 * dlam * math.sqrt(2 * dim) * ndtri(q)


# ------------------------------------------------------------------------------------------------------
# prior guidance
# ------------------------------------------------------------------------------------------------------
def prior_guidance(process, x_T: Float[Array, " N *shape"], q) -> Float[Array, " N *shape"]:
    """Prior guidance (latent rescaling, docs/math.md 5): ``x_T <- x_T * sigma_T * r / |x_T|`` per sample, with
    ``r = chi.ppf(1 - q, df=D)``.

    q is the dgjax log-density quantile: q > 0.5 gives a smaller radius, a higher log p_T and (through the
    PF-ODE) smoother samples; q < 0.5 more detail. NOTE: the published code indexes the radius instead:
    its q is the quantile of the norm |x_T| / sigma_T, the opposite direction (its q corresponds to
    dgjax's 1 - q).

    Args:
      process: the forward process (sigma_T = process.sigma(t_max)).
      x_T: (N, *shape) latents (nonzero rows).
      q: scalar or (N,) in (0, 1). A traced q is supported (the chi quantile is then solved in JAX).

    Returns: the rescaled latents, like x_T.
    """
    x_T = check_samples(x_T, "x_T")
    q = _q_for_batch(_check_q(q), x_T)
    return _rescale(x_T, prior_radius(process, q, event_dim(x_T)))


# ------------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------------
class DensityGuidance(ODESampler):
    """Density guidance on the PF-ODE (DG-ODE, docs/math.md 5).

    Quantile form (``rate=None``): ``v = f x - 1/2 g^2 eta s``, ``eta = 1 + sqrt(2D) Phi^{-1}(q) / |sigma s|^2``
    -- exactly one score evaluation per step when log p is not tracked, like the PF-ODE. It prescribes
    ``d/dt log p_t(x_t) = b^q = -div u - 1/2 g^2 sqrt(2D) Phi^{-1}(q) / sigma^2``, i.e. it shifts log p by
    ``1/2 (lambda(t_end) - lambda(t_start)) sqrt(2D) Phi^{-1}(q)`` relative to median behaviour
    (``log_density_shift``).

    Custom form (``rate`` given): ``rate(x (N, *shape), t scalar) -> b (N,)`` and
    ``v = u + (div u + b) / |s|^2 s`` makes ``d/dt log p_t(x_t) = b`` exactly. It needs div u at every
    step (``needs_divergence``: one score evaluation plus the divergence estimator's JVPs; with
    Hutchinson, pass ``key`` to ``dg.sample``). The log p actually attained is off by the integrated
    divergence-estimation error (zero with ``dg.Exact()``).

    Args:
      q: log-density quantile in (0, 1), scalar or per-sample (N,); a pytree leaf, so ``jax.grad`` with
        respect to q works. Ignored when ``rate`` is given.
      rate: optional custom rate b_t(x).
      start_at_median: rescale x_T to the median chi radius ``sigma_T chi.ppf(0.5, D)`` first (as the
        published method does; consistent results across latents).
      data_scale: an upper bound on the per-dimension standard deviation of the data, used only by the
        feasibility check (module docstring). Default 1 (data in [-1, 1]).
      feasibility_tol: the check's tolerance in units of log-SNR; 0 disables it.
      data_range: r when the data lie in [-r, r] (``TrainedModel.data_range``; 1 for dgjax's data sets):
        dg.sample then raises when the samples leave it (more than 1% of the batch's entries beyond 1.05 r), as
        guidance far from q = 0.5 does in either direction. None (default): not checked.

    With ``track_logp=True`` dg.sample reports log p along the guided path through the generic rate of
    docs/math.md 4(b), which equals the known rate b here.
    """

    q: Array
    rate: Callable | None = eqx.field(static=True)
    start_at_median: bool = eqx.field(static=True)
    data_scale: float = eqx.field(static=True)
    feasibility_tol: float = eqx.field(static=True)
    data_range: float | None = eqx.field(static=True)

    def __init__(self, q: float | Array = 0.5, rate: Callable | None = None, start_at_median: bool = True, *,
                 data_scale: float = 1.0, feasibility_tol: float = 1.0, data_range: float | None = None):
        if rate is not None and not callable(rate):
            raise InvalidArgument(f"rate: must be a callable rate(x, t) -> (N,) or None; got {rate!r}")
        check_param(isinstance(data_scale, (int, float)) and data_scale > 0, "data_scale",
                    f"must be a positive number; got {data_scale!r}")
        check_param(isinstance(feasibility_tol, (int, float)) and feasibility_tol >= 0, "feasibility_tol",
                    f"must be a number >= 0; got {feasibility_tol!r}")
        check_param(data_range is None or (isinstance(data_range, (int, float)) and 0 < data_range < math.inf),
                    "data_range", f"must be None or a finite positive number (data in [-r, r]); got {data_range!r}")
        self.data_range = None if data_range is None else float(data_range)
        self.q = _check_q(q)
        self.rate = rate
        self.start_at_median = bool(start_at_median)
        self.data_scale = float(data_scale)
        self.feasibility_tol = float(feasibility_tol)

    @property
    def needs_divergence(self) -> bool:
        """A custom rate needs div u at every step; the quantile form does not (div u cancels)."""
        return self.rate is not None

    def per_sample(self) -> tuple[Array, ...]:
        return (self.q,)

    def checked_range(self) -> float | None:
        return self.data_range

    def with_data_range(self, data_range: float | None) -> DensityGuidance:
        """This guidance with ``data_range`` (kept as is when it has its own)."""
        if self.data_range is not None or data_range is None:
            return self
        return DensityGuidance(self.q, self.rate, self.start_at_median, data_scale=self.data_scale,
                               feasibility_tol=self.feasibility_tol, data_range=data_range)

    def prepare(self, process, x_T):
        """Rescale each latent to the median chi radius sigma_T chi.ppf(0.5, D) (sigma_T at t_max)."""
        if not self.start_at_median:
            return x_T
        return _rescale(x_T, prior_radius(process, 0.5, event_dim(x_T)))

    def log_density_shift(self, process, dim: int, t_start=None, t_end=None):
        """``log_density_shift(process, self.q, dim, t_start, t_end)`` (docs/math.md 5, feasibility)."""
        return log_density_shift(process, self.q, dim, t_start, t_end)

    def velocity(self, coeffs, x, s, *, t, div_u: Array | None = None, **_):
        """dx/dt of this guidance at (x, t) given the score s there (and div u for a custom rate)."""
        opts = dict(data_scale=self.data_scale, feasibility_tol=self.feasibility_tol)
        if self.rate is None:
            return quantile_velocity(coeffs, x, s, self.q, **opts)
        assert div_u is not None, "a custom rate needs div u (needs_divergence)"
        b = checked_shape(self.rate(x, t), x, "rate",
                          f"rate(x, t) must return one value per sample, shape ({x.shape[0]},)", (x.shape[0],))
        return rate_velocity(coeffs, x, s, div_u, b, **opts)

    def phases(self, process, t_start, t_end):
        return [(t_start, t_end, self.velocity)]


class HighDensity(ODESampler):
    """The high-density sampler (docs/math.md 5): the PF-ODE from t_start (t_max) down to ``t_switch``, then the
    HD-ODE ``dx/dt = f x - g^2 s`` (the reverse SDE's drift without noise) to t_end (t_min).

    A larger t_switch (an earlier switch along sampling) gives higher-density, smoother samples. Both
    phases cost one score evaluation per step; the tracked log-density follows docs/math.md 4(b): on the HD phase
    ``d/dt log p = -div u - 1/2 g^2 |s|^2``.

    Args:
      t_switch: a time in [t_min, t_max] of the process (checked when sampling). At or above t_start the
        whole path is HD-ODE; at or below t_end it is the PF-ODE. Stored as a 0-d array (a pytree leaf),
        so a sweep over t_switch through one ``jax.jit`` / ``dg.sample_sharded`` reuses one compiled
        program; a traced t_switch (under jit) is clipped to [t_end, t_start], with the constant steps
        split between the phases as for a concrete one (``round(steps * phase length / span)``, at least 1).
    """

    t_switch: Array | np.ndarray  # a float64 0-d numpy array when concrete
    needs_divergence: ClassVar[bool] = False

    def __init__(self, t_switch):
        if is_concrete(t_switch):
            ok = isinstance(t_switch, (int, float, np.floating, np.ndarray, jax.Array)) and np.ndim(t_switch) == 0
            ok = (ok and not isinstance(t_switch, (bool, np.bool_))
                  and np.issubdtype(np.asarray(t_switch).dtype, np.number))
            check_param(ok and math.isfinite(float(t_switch)), "t_switch",
                        f"must be a finite number (a time of the process); got {t_switch!r}")
            self.t_switch = np.asarray(float(t_switch), np.float64)
        else:
            check_param(jnp.ndim(t_switch) == 0 and jnp.issubdtype(jnp.result_type(t_switch), jnp.floating),
                        "t_switch", f"a traced t_switch must be a floating-point scalar; got {t_switch!r}")
            self.t_switch = t_switch

    def phases(self, process, t_start, t_end):
        hd = lambda coeffs, x, s, **_: dyn.hd_drift(coeffs, x, s)  # noqa: E731
        lo, hi = process.t_min, process.t_max
        msg = f"t_switch must lie in [{lo}, {hi}], the time range of {type(process).__name__}"
        if not is_concrete(self.t_switch):
            ts = check_value(self.t_switch, ~((self.t_switch >= lo) & (self.t_switch <= hi)), msg)
            ts = jnp.clip(ts, t_end, t_start)  # phases of zero length where the switch lies outside the span
            return [(t_start, ts, dyn.pf_velocity), (ts, t_end, hd)]
        ts = float(self.t_switch)
        if not lo <= ts <= hi:
            raise InvalidArgument(f"{msg}; got {ts}")
        # the same two phases as when traced (the vector field looks its phase up by index in a sampler
        # rebuilt from traced leaves); run_ode skips a phase of zero length
        ts = min(max(ts, float(t_end)), float(t_start))
        return [(t_start, ts, dyn.pf_velocity), (ts, t_end, hd)]


# ------------------------------------------------------------------------------------------------------
# typicality
# ------------------------------------------------------------------------------------------------------
def typicality(score: Callable, process, x: Float[Array, " N *shape"], t, *, key=None,
               divergence: DivergenceEstimator | None = None) -> Float[Array, " N"]:
    """The typicality statistic of docs/math.md 5: ``h_t(x) = sigma_t^2 (Lap log p_t(x) + |s|^2) / sqrt(2D)``.

    For x ~ p_t, E[h] = 0 exactly; h is close to N(0, 1) where sigma_t^2 dominates the data variance, and
    its spread shrinks toward 0 as t -> 0 on full-rank data (std about sqrt(mean_i (sigma^2 / c_i)^2), c_i
    the local per-dimension variance). ``1/2 g^2 sqrt(2D) h / sigma^2`` is the gap between the reverse-SDE
    and PF-ODE log-density rates; density guidance with quantile q makes paths behave as h = Phi^{-1}(q).

    Args:
      score: ``score(x, t) -> like x``.
      process: the forward process.
      x: (N, *shape) points.
      t: scalar or (N,) time(s) in [t_min, t_max].
      key: PRNG key for Hutchinson probes (not needed with ``dg.Exact()``).
      divergence: Laplacian estimator, ``dg.Hutchinson(num_probes=1)`` (default) or ``dg.Exact()``.

    Returns: h (N,). Cost: one score evaluation plus the estimator's JVPs.
    """
    divergence = Hutchinson() if divergence is None else divergence
    x = check_samples(x, "x")
    t = check_time(process, jnp.asarray(t, dtype=x.dtype), "t")
    if t.ndim > 1 or (t.ndim == 1 and t.shape != (x.shape[0],)):
        raise InvalidArgument(f"t: must be a scalar or shape ({x.shape[0]},); got {t.shape}")
    probes = divergence.draw(key, x)
    s, lap = dyn.score_and_laplacian(score, x, t, divergence, probes)
    lap = jnp.mean(lap, axis=0)
    sigma = process.sigma(t)
    h = sigma**2 * (lap + batch_dot(s, s)) / math.sqrt(2 * event_dim(x))
    return check_nonfinite(h, "dg.typicality: the score and its Laplacian at x")
