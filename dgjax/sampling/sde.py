"""Stochastic samplers with the log-density tracked (docs/math.md sections 4(c), 4(d), 5).

Every SDE here is solved in reverse time tau = t_start - t (d tau = -dt > 0), as the Ito SDE

    dx = -v_t(x) d tau + G dW,        (v in forward-time units, as for ODEs)

with the log-density of docs/math.md 4(d) carried along in the same diffrax solve, driven by the *same*
Brownian increment dW that moves x:

    d log p_t(x_t) = [div u - s.(v - u) + 1/2 tr(G G^T H)] d tau + s . G dW.

- ``ReverseSDE()``: v = f x - g^2 s, G = g I, so (docs/math.md 4(c)) d log p = [f D + 1/2 g^2 |s|^2] d tau + g s.dW:
  no divergence, no Laplacian -- tracking is free (the score is already computed). Default scheme
  ``"ito"``: Euler-Maruyama on the pair (x, log p). Option ``scheme="stratonovich"``: the same SDE in
  Stratonovich form, d log p = [div u + 1/2 g^2 |s|^2] d tau + g s o dW (Ito-to-Stratonovich correction
  -1/2 g^2 Lap), solved by a Stratonovich solver: ``diffrax.Heun()`` (default) or ``diffrax.Midpoint()``,
  two evaluations per step (each: 1 score + the divergence estimator's JVPs). ``diffrax.ReversibleHeun``
  is refused: on this SDE its samples diverge (mean exact log p -3.3e6 at 124 steps, -2347 at 8000,
  against -30.9 for true samples; its PF-ODE use is fine). Option ``scheme="milstein"``: Euler-Maruyama
  with the pathwise Milstein term of docs/math.md 4(c). The midpoint-type evaluation of g s o dW captures the pathwise
  Ito term 1/2 g^2 dW^T H dW that Euler-Maruyama replaces by its mean; the price is the Laplacian in the drift (the
  divergence estimator's JVPs: one per Hutchinson probe). Measured in benchmarks/bench_sde.py.
- ``SDE(drift, diffusion)``: user dynamics; tr(G G^T H) and div u by Hutchinson probes (2K JVPs).
- ``StochasticDensityGuidance(q, noise, exact=False)``: G = phi P with P = I - s s^T/|s|^2 (noise
  orthogonal to the score, so log p has no noise term) and the drift of docs/math.md 5,
  v_S = v_DG + 1/2 phi^2 tr(P H P) / |s|^2 s, phi = phi_tilde(t) g(t); tr(PHP) = Lap - s^T H s/|s|^2
  (``exact=True``) or Lap alone (the published form). The tracked log p uses the docs/math.md 4(d) rate, so with
  the published form it reports the true deviation from the schedule (1/2 phi^2 s^T H s / |s|^2 per unit
  tau), never hides it.

Brownian paths (``brownian=``, ``sampling/brownian.py``): ``"steps"`` (one key per fixed step, split before
the solve: fastest, fixed steps only, no backpropagation), ``"unsafe"`` (``diffrax.UnsafeBrownianPath``,
likewise), ``"virtual"`` (``diffrax.VirtualBrownianTree``: any step-size controller, differentiable).
``"auto"`` (default) picks steps for fixed steps and virtual for adaptive ones. Either way one key
reproduces a path exactly. See benchmarks/bench_sde.py and bench_loop_overhead.py for the measured cost.
"""

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from equinox import AbstractClassVar, AbstractVar
from jaxtyping import Array

from .. import dynamics as dyn, grids
from .._checks import batch_dot, bcast, check_output, check_param, check_value, checked_shape, event_dim, is_concrete
from ..divergence import tracking_start
from ..errors import InvalidArgument
from ..processes import Process
from ..solve import Rebuild, add_nfe, solve_term, split_args
from .base import AbstractSampler, Cost
from .brownian import BROWNIAN, brownian_path, default_adjoint  # noqa: F401 (BROWNIAN re-exported)
from .guidance import DensityGuidance


class SDESampler(AbstractSampler):
    """Base of the stochastic samplers (abstract). ``coefficients`` gives, at (x, t), the linear-in-dW pieces of
    one step and ``apply_noise`` turns their noise part into (G dW, s.G dW); ``increment`` combines them (its
    default: the Euler-Maruyama form, drift dtau + noise); ``integrate`` runs them through one diffrax solve
    (``run_sde``). Every final sampler has the field ``brownian`` (``"auto"``, ``"steps"``, ``"unsafe"`` or
    ``"virtual"``, module docstring)."""

    brownian: AbstractVar[str]

    def __check_init__(self):
        check_param(self.brownian in BROWNIAN, "brownian", f"must be one of {BROWNIAN}; got {self.brownian!r}")

    @abc.abstractmethod
    def coefficients(self, score, process, x, t, divergence, probes, track: bool) -> tuple[Array, Array | None, Any]:
        """Returns (a_x, a_L, noise): the tau-drift of x, of log p per probe ((P, N) or None), and a pytree
        ``noise`` that ``apply_noise`` turns into (G dW, s.G dW)."""

    @staticmethod
    @abc.abstractmethod
    def apply_noise(noise, dw) -> tuple[Array, Array]:
        """(G dW like x, s.G dW (N,)) from the ``noise`` of ``coefficients`` and the Brownian increment dW."""

    def integrate(self, score, process, x, *, key, track_logp, divergence, options, logp_T, t_start, t_end):
        return run_sde(score, process, x, self, key, track_logp, divergence, options, logp_T, t_start, t_end)

    def default_solver(self):
        """The solver when ``dg.sample`` gets none: Euler-Maruyama."""
        return dfx.Euler()

    def check_solver(self, solver) -> None:
        """Refuse a solver this SDE cannot be solved with (default: an Ito SDE, Euler-Maruyama only)."""
        _check_solver(solver, dfx.AbstractItoSolver, (dfx.Euler,), f"{type(self).__name__} (an Ito SDE)")

    def increment(self, vf, dt, dw, track: bool):
        """(dx, dlogp) of one step from the vector field's output ``vf`` and the control (dt, dW)."""
        a_x, a_l, noise = vf
        gdw, sgdw = self.apply_noise(noise, dw)
        dx = a_x * dt + gdw
        if not track:
            return dx
        return dx, a_l * dt + sgdw[None, :]


def _check_solver(solver, kind: type, supported: tuple, what: str) -> None:
    """The solver's kind by diffrax's own types (``AbstractItoSolver`` / ``AbstractStratonovichSolver``), then
    whether this single-term solve supports it (diffrax's ``ItoMilstein`` and the SRK solvers need separate
    drift and diffusion terms)."""
    check_param(isinstance(solver, kind), "solver",
                f"{what} needs a solver of kind diffrax.{kind.__name__}, e.g. diffrax.{supported[0].__name__}(); "
                f"got {type(solver).__name__}")
    check_param(isinstance(solver, supported), "solver",
                f"{what}: of the solvers of kind diffrax.{kind.__name__} it supports "
                f"{', '.join('diffrax.' + c.__name__ for c in supported)}; got {type(solver).__name__}")


# ------------------------------------------------------------------------------------------------------
# the reverse SDE: one scheme object per way of solving it (the strings "ito", "stratonovich", "milstein"
# are shorthands for them)
# ------------------------------------------------------------------------------------------------------
class ReverseSDEScheme(eqx.Module):
    """How ``ReverseSDE`` solves the reverse SDE and tracks log p (abstract): ``ItoScheme``,
    ``StratonovichScheme`` or ``MilsteinScheme``. The solver kind it takes is diffrax's type
    (``solver_kind``: ``AbstractItoSolver`` or ``AbstractStratonovichSolver``); ``solvers`` are those of that
    kind it supports, the first the default."""

    name: AbstractClassVar[str]
    solver_kind: AbstractClassVar[type]
    solvers: AbstractClassVar[tuple]

    @abc.abstractmethod
    def cost(self, track: bool) -> Cost:
        """``Cost`` per evaluation (``AbstractSampler.cost``)."""

    @abc.abstractmethod
    def coefficients(self, score, process, x, t, divergence, probes, track: bool) -> tuple[Array, Array | None, Any]:
        """(a_x, a_L, noise) at (x, t) (``SDESampler.coefficients``)."""

    @abc.abstractmethod
    def increment(self, vf, dt, dw, track: bool) -> Any:
        """(dx, dlogp) of one step (``SDESampler.increment``)."""


def _reverse_noise(noise, dw):
    """(g dW, g s.dW) from noise = (g, g s)."""
    g, gs = noise
    return g * dw, batch_dot(gs, dw)


def _linear_increment(vf, dt, dw, track: bool):
    """dx = a_x dtau + g dW and d log p = a_L dtau + g s.dW, from vf = (a_x, a_L, (g, g s))."""
    a_x, a_l, noise = vf
    gdw, sgdw = _reverse_noise(noise, dw)
    dx = a_x * dt + gdw
    return dx if not track else (dx, a_l * dt + sgdw[None, :])


class ItoScheme(ReverseSDEScheme):
    """Euler-Maruyama on the pair (x, log p) (docs/math.md 4(c)): d log p = [f D + 1/2 g^2 |s|^2] dtau + g s.dW; 1 score
    evaluation per step, tracking free."""

    name: ClassVar[str] = "ito"
    solver_kind: ClassVar[type] = dfx.AbstractItoSolver
    solvers: ClassVar[tuple] = (dfx.Euler,)

    def cost(self, track):
        return Cost()

    def coefficients(self, score, process, x, t, divergence, probes, track):
        coeffs = process.coefficients_like(t, x)
        _, _, f, g2 = coeffs
        g = jnp.sqrt(g2)
        s = score(x, t)
        a_x = -dyn.hd_drift(coeffs, x, s)
        if track:  # the |s|^2 and s.dW terms are formed in ``increment`` in one pass
            return a_x, f * event_dim(x), (g, s, 0.5 * g2)
        return a_x, None, (g, g * s)

    def increment(self, vf, dt, dw, track):
        if not track:
            return _linear_increment(vf, dt, dw, track)
        # docs/math.md 4(c), Ito: d log p = f D dtau + s . (1/2 g^2 s dtau + g dW): one (N,) dot product per step.
        # g dW is read back from dx: XLA (CPU) otherwise fuses the Gaussian draw (threefry bits -> erf_inv) into
        # both consumers, x's update and the dot, and computes it twice (109 erf_inv ops instead of 56 in the
        # compiled HLO, D = 3072); jax.lax.optimization_barrier does not stop this, XLA expands it away first.
        a_x, a_l, (g, s, half_g2) = vf
        dx = a_x * dt + g * dw
        return dx, a_l * dt + batch_dot(s, half_g2 * dt * s + (dx - a_x * dt))[None, :]


class StratonovichScheme(ReverseSDEScheme):
    """The reverse SDE in Stratonovich form, d log p = [div u + 1/2 g^2 |s|^2] dtau + g s o dW (module
    docstring), solved by a Stratonovich solver: ``diffrax.Heun()`` (default) or ``diffrax.Midpoint()``, two
    evaluations per step, each 1 score + the divergence estimator's JVPs when tracking."""

    name: ClassVar[str] = "stratonovich"
    solver_kind: ClassVar[type] = dfx.AbstractStratonovichSolver
    # diffrax.ReversibleHeun is of this kind but refused: its reverse-SDE samples diverge (ReverseSDE.check_solver)
    solvers: ClassVar[tuple] = (dfx.Heun, dfx.Midpoint)

    def cost(self, track):
        return Cost(divergence_passes=int(track))

    def coefficients(self, score, process, x, t, divergence, probes, track):
        coeffs = process.coefficients_like(t, x)
        g2 = coeffs.g2
        if track:
            s, lap = dyn.score_and_laplacian(score, x, t, divergence, probes)
            a_l = dyn.pf_divergence(coeffs, lap, event_dim(x)) + 0.5 * g2 * batch_dot(s, s)
        else:
            s, a_l = score(x, t), None
        return -dyn.hd_drift(coeffs, x, s), a_l, (jnp.sqrt(g2), jnp.sqrt(g2) * s)

    def increment(self, vf, dt, dw, track):
        return _linear_increment(vf, dt, dw, track)


class MilsteinScheme(ReverseSDEScheme):
    """Euler-Maruyama plus the pathwise term 1/2 g^2 (dW^T H dW - Lap dtau) of docs/math.md 4(c) along the increment
    that moves x: per step 1 score + K JVPs (Lap) + 1 JVP (H dW) when tracking."""

    name: ClassVar[str] = "milstein"
    solver_kind: ClassVar[type] = dfx.AbstractItoSolver
    solvers: ClassVar[tuple] = (dfx.Euler,)

    def cost(self, track):
        # K JVPs for the Laplacian's mean + 1 JVP (H dW) along the step's own increment
        return Cost(divergence_passes=int(track), extra_jvps=int(track))

    def coefficients(self, score, process, x, t, divergence, probes, track):
        if not track:
            return ItoScheme().coefficients(score, process, x, t, divergence, probes, track)
        coeffs = process.coefficients_like(t, x)
        _, _, f, g2 = coeffs
        # Ito drift of log p minus the mean of the pathwise term (1/2 g^2 Lap per probe); the term itself,
        # 1/2 (g dW)^T H (g dW), is added in ``increment`` along the very increment that moves x
        s, jvp = jax.linearize(lambda z: score(z, t), x)
        lap = divergence.quadratic_traces(lambda z: batch_dot(z, jvp(z)), x, probes)  # (P, N)
        a_l = f * event_dim(x) + 0.5 * g2 * (batch_dot(s, s) - lap)
        return -dyn.hd_drift(coeffs, x, s), a_l, (jnp.sqrt(g2), s, jvp)

    def increment(self, vf, dt, dw, track):
        if not track:
            return _linear_increment(vf, dt, dw, track)
        # docs/math.md 4(c) + Milstein: d log p = [f D + 1/2 g^2 (|s|^2 - Lap)] dtau + g s.dW + 1/2 (g dW)^T H (g dW)
        a_x, a_l, (g, s, jvp) = vf
        dx = a_x * dt + g * dw
        gdw = dx - a_x * dt  # read back from dx: one Gaussian draw per step (see ItoScheme.increment)
        return dx, a_l * dt + batch_dot(gdw, s + 0.5 * jvp(gdw))[None, :]


REVERSE_SDE_SCHEMES: dict[str, Callable[[], ReverseSDEScheme]] = {
    c.name: c for c in (ItoScheme, StratonovichScheme, MilsteinScheme)}


def _to_scheme(scheme) -> ReverseSDEScheme:
    """A scheme object from itself or its shorthand string."""
    if isinstance(scheme, ReverseSDEScheme):
        return scheme
    names = "', '".join(REVERSE_SDE_SCHEMES)
    check_param(isinstance(scheme, str) and scheme in REVERSE_SDE_SCHEMES, "scheme",
                f"must be '{names}' or a ReverseSDEScheme; got {scheme!r}")
    return REVERSE_SDE_SCHEMES[scheme]()


class ReverseSDE(SDESampler):
    """The reverse SDE dx = [f x - g^2 s] dt + g dW_bar (docs/math.md 3) with free log-density tracking
    (docs/math.md 4(c)).

    Args:
      scheme: ``"ito"`` / ``ItoScheme()`` (default; Euler-Maruyama, 1 score evaluation per step, tracking free),
        ``"stratonovich"`` / ``StratonovichScheme()`` (more accurate tracking at the cost of the Laplacian
        estimate; needs ``key`` for Hutchinson probes or ``divergence=dg.Exact()``; solvers ``diffrax.Heun()``
        (default) and ``diffrax.Midpoint()``, 2 evaluations per step, each 1 score + K JVPs for K probes;
        ``diffrax.ReversibleHeun`` is refused, its reverse-SDE samples diverge), or ``"milstein"`` /
        ``MilsteinScheme()`` (Euler-Maruyama plus the pathwise term 1/2 g^2 (dW^T H dW - Lap dtau) of
        docs/math.md 4(c) along the increment that moves x: per step 1 score + K JVPs (Lap) + 1 JVP (H dW); tracking
        only). The scheme decides the solver kind (diffrax's ``AbstractItoSolver`` or
        ``AbstractStratonovichSolver``) and the vector field.
      brownian: ``"auto"``, ``"steps"``, ``"unsafe"`` or ``"virtual"`` (module docstring).
    """

    scheme: ReverseSDEScheme = eqx.field(static=True, default="ito", converter=_to_scheme)
    brownian: str = eqx.field(static=True, default="auto", kw_only=True)

    def cost(self, track):
        return self.scheme.cost(track)

    def default_solver(self):
        return self.scheme.solvers[0]()

    def check_solver(self, solver):
        if isinstance(solver, dfx.ReversibleHeun) and self.scheme.solver_kind is dfx.AbstractStratonovichSolver:
            raise InvalidArgument("solver: diffrax.ReversibleHeun makes the reverse SDE diverge (its samples' exact "
                                  "log p -3.3e6 at 124 steps); use diffrax.Heun() (the default) or diffrax.Midpoint()")
        _check_solver(solver, self.scheme.solver_kind, self.scheme.solvers, f"ReverseSDE(scheme={self.scheme.name!r})")

    def coefficients(self, score, process, x, t, divergence, probes, track):
        return self.scheme.coefficients(score, process, x, t, divergence, probes, track)

    @staticmethod
    def apply_noise(noise, dw):
        return _reverse_noise(noise, dw)

    def increment(self, vf, dt, dw, track):
        return self.scheme.increment(vf, dt, dw, track)


class SDE(SDESampler):
    """User SDE, in forward-time units: dx = drift dt + G dW_bar (integrated from t_start down to t_end),
    i.e. the Ito SDE dx = -drift d tau + G dW in reverse time, with log p tracked by docs/math.md 4(d).

    ``drift(x, t, s) -> v`` (like x) and ``diffusion(x, t, s, dw) -> G dw`` (like x, linear in dw: a
    matrix-free G) both receive the score s at (x, t), already evaluated. Tracking costs 2K JVPs per step
    for K Hutchinson probes z: div u from z^T H z and tr(G G^T H) = tr(G^T H G) from (G z)^T H (G z).
    Solver: Euler-Maruyama (``diffrax.Euler()``).
    """

    drift: Callable
    diffusion: Callable
    brownian: str = eqx.field(static=True, default="auto", kw_only=True)

    def cost(self, track):
        return Cost(divergence_passes=2 if track else 0)  # z^T H z and (G z)^T H (G z)

    def coefficients(self, score, process, x, t, divergence, probes, track):
        coeffs = process.coefficients_like(t, x)
        if not track:
            s = score(x, t)
            v = _checked(self.drift(x, t, s), x, "drift")
            return -v, None, (self.diffusion, x, t, s)
        diffusion = self.diffusion
        s, jvp = jax.linearize(lambda z: score(z, t), x)

        def quad_ggh(z):  # (G z)^T H (G z): its trace estimate is tr(G^T H G) = tr(G G^T H)
            gz = _checked(diffusion(x, t, s, z), x, "diffusion")
            return batch_dot(gz, jvp(gz))

        lap = divergence.quadratic_traces(lambda z: batch_dot(z, jvp(z)), x, probes)  # (P, N)
        tr_ggh = divergence.quadratic_traces(quad_ggh, x, probes)  # (P, N)
        v = _checked(self.drift(x, t, s), x, "drift")
        u = dyn.pf_drift(coeffs, x, s)
        div_u = dyn.pf_divergence(coeffs, lap, event_dim(x))
        a_l = div_u - batch_dot(s, v - u) + 0.5 * tr_ggh
        return -v, a_l, (diffusion, x, t, s)

    @staticmethod
    def apply_noise(noise, dw):
        diffusion, x, t, s = noise
        gdw = diffusion(x, t, s, dw)
        return gdw, batch_dot(s, gdw)


def _checked(v, x, name):
    return checked_shape(v, x, name, "it must return an array like x")


def _check_noise_fn(noise, process, dtype):
    """noise(t) must return a scalar; negative values raise (also under jit)."""
    out = jax.eval_shape(noise, jnp.asarray(process.t_max, dtype))
    if getattr(out, "shape", None) != ():
        raise InvalidArgument(f"noise: noise(t) must return a scalar phi_tilde(t) >= 0; "
                              f"got shape {getattr(out, 'shape', out)}")


class StochasticDensityGuidance(SDESampler):
    """Stochastic density guidance (DG-SDE, docs/math.md 5): density guidance with noise orthogonal to the score.

        dx = v_S dt + phi P dW_bar,   P = I - s s^T / |s|^2,   phi = phi_tilde(t) g(t)
        v_S = v_DG + 1/2 phi^2 tr(P H P) / |s|^2 s

    so that d/dt log p_t(x_t) = b_t exactly: the log-density follows the guidance schedule along every
    noisy path. ``exact=False`` (the published method) uses Lap for tr(PHP); ``exact=True`` subtracts
    s^T H s / |s|^2 (one JVP more per step). With ``track_logp`` the rate of docs/math.md 4(d) is integrated, so
    the published form's deviation from the schedule shows up in the tracked value.

    Args:
      q: log-density quantile in (0, 1) (see ``dg.DensityGuidance``); or a custom ``rate``.
      noise: ``phi_tilde(t) -> scalar >= 0``; see ``noise_window`` / ``noise_window_log_snr``.
      exact: include the s^T H s / |s|^2 term.
      rate, start_at_median, and keyword options: as ``dg.DensityGuidance``.
    Cost per step: one score evaluation + the divergence estimator's JVPs (Lap, needed by the drift
    even without tracking; pass ``key``) + 1 JVP for ``exact`` (or for tracking the published form).
    """

    guidance: DensityGuidance
    noise: Callable
    exact: bool = eqx.field(static=True)
    brownian: str = eqx.field(static=True)

    def __init__(self, q=0.5, noise: Callable | None = None, exact: bool = False, *, rate=None,
                 start_at_median: bool = True, brownian: str = "auto", **guidance_kwargs):
        if noise is None or not callable(noise):
            raise InvalidArgument("noise: pass a callable phi_tilde(t) -> scalar >= 0, e.g. "
                                  "dg.noise_window(0.2, 0.6, 1.0)")
        self.guidance = DensityGuidance(q, rate=rate, start_at_median=start_at_median, **guidance_kwargs)
        self.noise = noise
        self.exact = bool(exact)
        self.brownian = brownian

    @property
    def q(self):
        return self.guidance.q

    def with_data_range(self, data_range: float | None) -> "StochasticDensityGuidance":
        return eqx.tree_at(lambda s: s.guidance, self, self.guidance.with_data_range(data_range))

    def per_sample(self) -> tuple[Array, ...]:
        return self.guidance.per_sample()

    def checked_range(self) -> float | None:
        return self.guidance.checked_range()

    def cost(self, track):
        return Cost(divergence_passes=1, extra_jvps=int(self.exact or track))  # Lap; s^T H s

    def prepare(self, process, x_T):
        _check_noise_fn(self.noise, process, x_T.dtype)
        return self.guidance.prepare(process, x_T)

    def coefficients(self, score, process, x, t, divergence, probes, track):
        coeffs = process.coefficients_like(t, x)
        _, _, f, g2 = coeffs
        d = event_dim(x)
        need_shs = self.exact or track
        s, jvp = jax.linearize(lambda z: score(z, t), x)
        lap = divergence.quadratic_traces(lambda z: batch_dot(z, jvp(z)), x, probes)  # (P, N)
        lap_mean = jnp.mean(lap, axis=0)
        s_sq = batch_dot(s, s)
        inv_s_sq = 1.0 / jnp.maximum(s_sq, jnp.finfo(x.dtype).tiny)
        shs = batch_dot(s, jvp(s)) * inv_s_sq if need_shs else 0.0  # s^T H s / |s|^2
        phi_t = jnp.asarray(self.noise(t), x.dtype)
        phi_t = check_value(phi_t, phi_t < 0, "noise: noise(t) returned a negative value; phi_tilde must be >= 0")
        phi2 = phi_t**2 * g2
        div_u = dyn.pf_divergence(coeffs, lap, d)  # (P, N)
        v_dg = self.guidance.velocity(coeffs, x, s, t=t, div_u=jnp.mean(div_u, axis=0))
        tr_php = lap_mean - shs if self.exact else lap_mean
        v_s = v_dg + bcast(0.5 * phi2 * tr_php * inv_s_sq, x) * s
        a_l = None
        if track:
            # docs/math.md 4(d) with G = phi P: s.P dW = 0, tr(G G^T H) = phi^2 (Lap - s^T H s/|s|^2)
            u = dyn.pf_drift(coeffs, x, s)
            a_l = div_u - batch_dot(s, v_s - u) + 0.5 * phi2 * (lap - shs)
        s_hat = s * bcast(jnp.sqrt(inv_s_sq), x)
        return -v_s, a_l, (jnp.sqrt(phi2), s_hat)

    @staticmethod
    def apply_noise(noise, dw):
        phi, s_hat = noise
        pdw = dw - s_hat * bcast(batch_dot(s_hat, dw), dw)
        return phi * pdw, jnp.zeros(dw.shape[0], dw.dtype)


def _window_param(v, name: str) -> Array | np.ndarray:
    """A window parameter as a leaf: a float64 0-d numpy array when concrete (exact, and traced by
    ``equinox.filter_jit`` so that a sweep over it compiles once), or the tracer itself under jit."""
    if is_concrete(v):
        check_param(np.ndim(v) == 0 and math.isfinite(float(v)), name, f"must be a finite number; got {v!r}")
        return np.asarray(float(v), np.float64)
    return v


class NoiseWindow(eqx.Module):
    """phi_tilde(t) = level on t_from <= t <= t_to, 0 elsewhere (``dg.noise_window``). Its parameters are
    pytree leaves: a sweep over them through one jit-compiled sampler (``dg.sample_sharded``) compiles once."""

    level: Array | np.ndarray  # float64 0-d numpy arrays when concrete (``_window_param``)
    t_from: Array | np.ndarray
    t_to: Array | np.ndarray

    def __call__(self, t):
        return jnp.where((t >= self.t_from) & (t <= self.t_to), self.level, 0.0)


class NoiseWindowLogSNR(eqx.Module):
    """phi_tilde(t) = level where lambda_from <= lambda_t <= lambda_to (``dg.noise_window_log_snr``); leaves
    as ``NoiseWindow``."""

    process: Process
    level: Array | np.ndarray  # as NoiseWindow's
    lambda_from: Array | np.ndarray
    lambda_to: Array | np.ndarray

    def __call__(self, t):
        lam = self.process.log_snr(t)
        return jnp.where((lam >= self.lambda_from) & (lam <= self.lambda_to), self.level, 0.0)


def _check_window(level: Array | np.ndarray, lo, hi, names) -> Array | np.ndarray:
    if is_concrete((level, lo, hi)):
        check_param(float(level) >= 0, "level", f"must be >= 0; got {level}")
        check_param(float(lo) < float(hi), names[0], f"must be below {names[1]}; got {lo} >= {hi}")
        return level
    return check_value(level, (level < 0) | (lo >= hi),
                        f"noise window: level must be >= 0 and {names[0]} below {names[1]}")


def noise_window(level: float | Array, t_from: float | Array, t_to: float | Array) -> NoiseWindow:
    """phi_tilde(t) = level on t_from <= t <= t_to, 0 elsewhere (a window in process time). Arguments may
    be traced (under jit)."""
    lv, lo, hi = (_window_param(v, n) for v, n in ((level, "level"), (t_from, "t_from"), (t_to, "t_to")))
    return NoiseWindow(_check_window(lv, lo, hi, ("t_from", "t_to")), lo, hi)


def noise_window_log_snr(process: Process, level: float | Array, lambda_from: float | Array,
                         lambda_to: float | Array) -> NoiseWindowLogSNR:
    """phi_tilde(t) = level where lambda_from <= lambda_t <= lambda_to (a window in log-SNR, as in the
    published experiments: early 0.2 on (-10, -4), late 0.3 on (-3, 9) for VP in [-10, 10]). Arguments
    other than ``process`` may be traced."""
    lv, lo, hi = (_window_param(v, n) for v, n in
                  ((level, "level"), (lambda_from, "lambda_from"), (lambda_to, "lambda_to")))
    return NoiseWindowLogSNR(process, _check_window(lv, lo, hi, ("lambda_from", "lambda_to")), lo, hi)


# ------------------------------------------------------------------------------------------------------
# the solve: one diffrax term carrying (x, log p) and the shared Brownian increment
# ------------------------------------------------------------------------------------------------------
class _AugmentedSDETerm(dfx.AbstractTerm):
    """vf(tau, y) = (a_x, a_L, noise); contr = (d tau, dW); prod = (a_x dtau + G dW, a_L dtau + s.G dW).

    One vector-field call gives both the drift and the noise coefficients, so the score is evaluated once
    per Euler-Maruyama step, and the log-density's noise uses the very increment that moves x."""

    coeff_fn: Callable
    increment: Callable
    path: dfx.AbstractBrownianPath
    track: bool = eqx.field(static=True)

    def vf(self, t, y, args):
        return self.coeff_fn(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0, self.path.evaluate(t0, t1, **kwargs)

    def prod(self, vf, control):
        dt, dw = control
        return self.increment(vf, dt, dw, self.track)


class _SDECoefficients(eqx.Module):
    """The sampler's coefficients at tau = t_start - t, the score, sampler and divergence estimator rebuilt from
    args = (probes, params) by ``rebuild`` (as ``ode._ODEField``: a module, so that the compiled solve is reused)."""

    rebuild: Rebuild  # of (score, sampler, divergence)
    process: Any
    track: bool
    t_start: Any

    def __call__(self, tau, y, args):
        probes, params = args
        score, sampler, divergence = self.rebuild(params)
        xx = y[0] if self.track else y
        t = jnp.asarray(self.t_start, xx.dtype) - tau
        return sampler.coefficients(score, self.process, xx, t, divergence, probes, self.track)


def run_sde(score, process, x, sampler: SDESampler, key, track_logp, divergence, options, logp_T, t_start,
            t_end):
    """Integrate an SDE sampler from t_start to t_end (in tau); returns (y, nfe, num_steps),
    y = x or (x, log p per probe (P, N))."""
    solver, steps, rtol, atol, adjoint = options.solver, options.steps, options.rtol, options.atol, options.adjoint
    if key is None:
        raise InvalidArgument("key: stochastic sampling needs a PRNG key (key=jax.random.key(...)) for the Brownian "
                              "path")
    steps, ts = grids.plan(process, t_start, t_end, steps, options.grid)
    if ts is not None:  # the SDE is integrated in tau = t_start - t; the Brownian path gets the step count
        steps, ts = len(ts) - 1, float(t_start) - ts
    if steps is None and rtol is None and atol is None:
        raise InvalidArgument("steps: give steps=... (constant steps) for SDE sampling, or rtol/atol with an adaptive "
                              "Stratonovich solver")
    solver = sampler.default_solver() if solver is None else solver
    sampler.check_solver(solver)
    k_bm, k_probe = jax.random.split(key)
    use_div = sampler.uses_divergence(track_logp)
    probes, logp0 = tracking_start(divergence, k_probe, x, logp_T, draw=use_div)
    span = float(t_start - t_end)
    path = brownian_path(sampler.brownian, k_bm, x.shape, x.dtype, span, steps, knots=ts)
    adjoint = default_adjoint(path, adjoint)

    params, rebuild = split_args((score, sampler, divergence))  # through args, as in run_ode
    coeff_fn = _SDECoefficients(rebuild, process, track_logp, t_start)
    term = _AugmentedSDETerm(coeff_fn, sampler.increment, path, track_logp)
    y0 = (x, logp0) if track_logp else x
    y1, evals, stats = solve_term(term, y0, 0.0, span, args=(probes, params), options=options, solver=solver,
                                  adjoint=adjoint, steps=None if ts is not None else steps, grid=ts)
    y1 = check_output(y1, f"dg.sample: the SDE solve ({type(sampler).__name__})")
    nfe = add_nfe(0, evals, sampler.nfe_per_eval(track_logp, divergence, x[0].size))
    return y1, nfe, stats["num_steps"]


