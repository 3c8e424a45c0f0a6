"""Score alignment: push the prior score forward with the PF-ODE flow (docs/math.md section 6).

With the PF-ODE drift ``u_t(x) = f x - 1/2 g^2 s(x, t)`` and its flow map ``Phi`` from t_max down to
``t_end``, the tangent ODE

    dw/dt = J_u(x_t) w,        w_T = s_T(x_T)   (or any other starting direction, e.g. the prior score)

solved together with ``x_t`` gives ``w_{t_end} = DPhi(x_T) w_T`` (one JVP of the score per evaluation).
The *alignment* is

    A(x_T) = <s_{t_end}(x_{t_end}), w_{t_end}> = d/de log p_{t_end}(Phi(x_T + e w_T)) at e = 0,

the directional derivative of the decoded log-density along w_T. Score alignment holds at x_T when
A > 0. With the Gaussian prior's score ``w_T = -x_T / sigma_T^2`` (``w_T="prior"``) this is exactly

    d/dc log p_{t_end}(Phi(c x_T)) at c = 1  =  -sigma_T^2 A,

so, where alignment holds, scaling the latent changes the decoded log-density in the same direction
as it changes the prior's (``d/dc log p_T(c x_T) = -|x_T|^2 / sigma_T^2 < 0``).

Score-free form (``score_free=True``): track ``omega_t = <s_t(x_t), w_t>`` instead, using

    d omega / dt = -div_x(J_u(x) w) = 1/2 g^2 div_x(J_s(x) w)      (w held fixed inside the divergence),
    omega_T = <s_T(x_T), w_T>  (= |s_T(x_T)|^2 by default),

which follows from the Fokker-Planck equation when s is the score of the density u transports. The
divergence of the JVP map is a second-order term (a JVP of a JVP: ``v^T d/dx(J_s(x) w) v``), estimated
with ``dg.Hutchinson`` (default; with constant steps fresh probes at every step, as in the published
code -- Rademacher probes cycle through the rows of a randomly signed Hadamard matrix, so consecutive
steps' probes are orthogonal and their noise cancels; with adaptive steps drawn once per solve, one key
per sample, held fixed along the path) or ``dg.Exact()`` (small D). The read-out never evaluates the score at t_end:
omega comes from the drift along the path only. (The solver still evaluates the vector field at its own stages, which
for Tsit5 include t_end as the first-same-as-last stage; with constant ``steps`` that value is not used at all, and a
score that is NaN at t_end leaves the score-free result finite, as tested; an adaptive controller does use it in the
error estimate of the last step.) The two forms agree up to solver
error when s is an exact score (the oracle); for a learned score they differ by how far ``s_theta`` is
from the score of the model's own PF-ODE density. The Hutchinson noise of the second-order term is
heavy-tailed on the oracle (narrow components); redrawing the probes (the default under constant
steps) cancels it along the path. Costs against a plain PF-ODE solve: benchmarks/bench_alignment.py.

NFE per sample (docs/math.md 4 convention: a score evaluation is 1, a JVP of the score 1 more, and a JVP of a
JVP 2 more, as it propagates both a first- and a second-order tangent):

    score form:       [1 if w_T defaults to s_T] + 2 per vector-field evaluation + 1 (s at t_end)
    score-free form:  1 (s_T for omega_T) + (2 + 2 K) per vector-field evaluation (K probes; K = D for Exact)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import dynamics as dyn, grids
from ._checks import batch_dot, check_finite, check_output, check_samples, check_score_fn, entry_point, is_concrete
from .divergence import DivergenceEstimator, Exact, Hutchinson, tracking_start
from .errors import InvalidArgument
from .solve import Rebuild, SolveOptions, add_nfe, merge_options, solve, split_args


class Alignment(eqx.Module):
    """What ``dg.score_alignment(..., return_details=True)`` returns.

    value: (N,) the alignment <s_{t_end}(x_{t_end}), w_{t_end}> (score form), or the tracked omega
      (score-free form: the mean over Hutchinson probes).
    cosine: (N,) cosine of the angle between s_{t_end}(x_{t_end}) and w_{t_end} (score form only;
      None in the score-free form, which never evaluates s at t_end).
    aligned_fraction: scalar, the fraction of the batch where alignment holds (value > 0).
    x_end: (N, *shape) the PF-ODE solution at t_end.
    w_end: (N, *shape) the pushed-forward direction DPhi(x_T) w_T.
    w_T: (N, *shape) the starting direction that was pushed forward.
    stderr: (N,) standard error of the score-free value across probes (0 for one probe, Exact, or the
      score form).
    nfe: score evaluations per sample (JVPs counted as in the module docstring); -1 if the solver's
      evaluation count is unknown.
    num_steps: solver steps taken (accepted and rejected).
    """

    value: Array
    cosine: Array | None
    aligned_fraction: Array
    x_end: Array
    w_end: Array
    w_T: Array
    stderr: Array
    nfe: Array
    num_steps: Array


def _flat_norm(a):
    return jnp.sqrt(batch_dot(a, a))


class _TangentField(eqx.Module):
    """(dx/dt, dw/dt) = (u(x), J_u(x) w): one score evaluation and one JVP along w. The score is rebuilt from
    args = its params and ``static`` (as ``sampling.ode._ODEField``: adjoints differentiate through args, and
    the compiled solve is reused by the next call)."""

    rebuild: Rebuild
    process: Any

    def __call__(self, t, y, args):
        score = self.rebuild(args)
        x, w = y
        coeffs = self.process.coefficients_like(t, x)
        s, js_w = jax.jvp(lambda z: score(z, t), (x,), (w,))
        # J_u w = f w - 1/2 g^2 J_s w has the same form as the drift itself.
        return dyn.pf_drift(coeffs, x, s), dyn.pf_drift(coeffs, w, js_w)


def _second_order_traces(inner: Callable, x, probes):
    """(s, J_s w, traces (P, N)) with traces the per-probe ``v^T d/dx(J_s(x) w) v``.

    ``inner(z) = (s(z), J_s(z) w)``; one forward-over-forward pass per probe gives s, J_s w and the
    mixed second-order term together (under vmap, s and J_s w do not depend on the probe and are
    computed once). ``probes`` (K, N, *shape) are Hutchinson's; None means exact: the D basis vectors,
    summed (chunked with ``lax.map``; memory N * D per chunk entry).
    """

    def one(v):
        (s, js_w), (_, mixed) = jax.jvp(inner, (x,), (v,))
        return s, js_w, batch_dot(v, mixed)

    if probes is not None:
        if probes.shape[0] == 1:
            s, js_w, tr = one(probes[0])
            return s, js_w, tr[None]
        return jax.vmap(one, out_axes=(None, None, 0))(probes)
    d = x[0].size
    basis = jnp.reshape(jnp.eye(d, dtype=x.dtype), (d, 1) + x.shape[1:])
    diag = jax.lax.map(lambda e: one(jnp.broadcast_to(e, x.shape))[2], basis, batch_size=min(d, 64))
    s, js_w = inner(x)
    return s, js_w, jnp.sum(diag, axis=0)[None]


class _ScoreFreeField(eqx.Module):
    """(dx/dt, dw/dt, d omega/dt per probe (P, N)), with d omega/dt = 1/2 g^2 div_x(J_s(x) w).

    ``args`` = (first, params): ``first`` is the fixed probes (None for ``dg.Exact``), or (``redraw`` = the
    number of constant steps, or the step times of a grid, as a tuple) a key from which fresh probes are drawn at
    every step: all stages of one step share its probes (folded in from the step index), so a Runge-Kutta step
    integrates one smooth field and its negative weights (Tsit5's reach -3.3) do not amplify independent probe
    noise. The score is rebuilt from ``params`` and ``static`` (``_TangentField``).
    """

    rebuild: Rebuild
    process: Any
    divergence: Any
    t_hi: Any
    t_lo: Any
    redraw: Any = eqx.field(static=True)

    def __call__(self, t, y, args):
        first, params = args
        score = self.rebuild(params)
        x, w, _ = y
        if self.redraw is not None:
            probes = self.divergence.draw_step(first, x, grids.step_index(t, self.t_hi, self.t_lo, self.redraw))
        else:
            probes = first
        coeffs = self.process.coefficients_like(t, x)
        # z -> (s(z), J_s(z) w): w is a constant inside (held fixed in the divergence).
        inner = lambda z: jax.jvp(lambda q: score(q, t), (z,), (w,))  # noqa: E731
        s, js_w, traces = _second_order_traces(inner, x, probes)
        _, _, _, g2 = coeffs
        return dyn.pf_drift(coeffs, x, s), dyn.pf_drift(coeffs, w, js_w), 0.5 * g2 * traces


def _check_t_end(process, t_end) -> float:
    """t_end must be a concrete scalar strictly inside (t_min, t_max): the solve's span is static."""
    if not is_concrete(t_end):
        raise InvalidArgument("t_end must be a concrete number (a Python float), not a traced value: the solve's "
                              "time span is static; close over it instead of passing it through jit")
    if np.ndim(t_end) != 0:
        raise InvalidArgument(f"t_end must be a scalar time in ({process.t_min}, {process.t_max}); "
                              f"got shape {np.shape(t_end)}")
    t = float(t_end)
    if not process.t_min < t < process.t_max:  # also rejects NaN
        raise InvalidArgument(f"t_end must lie in ({process.t_min}, {process.t_max}), the time range of "
                              f"{type(process).__name__} without its ends (t_max: nothing to push forward); got {t}")
    return t


def _prepare_w_T(w_T, x_T, process):
    if isinstance(w_T, str):
        if w_T != "prior":
            raise InvalidArgument(f"w_T: expected None (the score s_T(x_T)), 'prior' (-x_T / sigma_T^2) or an array "
                                  f"like x_T; got {w_T!r}")
        sigma_T = process.sigma(jnp.asarray(process.t_max, dtype=x_T.dtype))
        return -x_T / sigma_T**2
    w_T = jnp.asarray(w_T)
    if w_T.shape != x_T.shape:
        raise InvalidArgument(f"w_T must have the shape of x_T, {tuple(x_T.shape)}; got {tuple(w_T.shape)}")
    if not jnp.issubdtype(w_T.dtype, jnp.floating):
        raise InvalidArgument(f"w_T must be a floating-point array; got dtype {w_T.dtype}")
    return check_finite(w_T.astype(x_T.dtype), "w_T")


@entry_point
def score_alignment(score: Callable, process, x_T: Float[Array, " N *shape"], t_end: float, *,
                    key=None, score_free: bool = False,
                    w_T=None, divergence: DivergenceEstimator | None = None, solver=None,
                    steps: int | None = None, rtol: float | None = None, atol: float | None = None,
                    redraw_probes: bool | None = None, return_details: bool = False, adjoint=None,
                    max_steps: int | None = None, grid=None, options: SolveOptions | None = None):
    """Score alignment <s_{t_end}(x_{t_end}), w_{t_end}> of latents x_T (docs/math.md section 6).

    Solves the PF-ODE together with its tangent ODE dw/dt = J_u(x_t) w from t_max down to ``t_end``
    (one ``diffrax.diffeqsolve``), starting from ``w_T``, and reads out the inner product with the score
    at t_end; or, with ``score_free=True``, tracks omega_t = <s_t(x_t), w_t> by its score-free rate
    -div_x(J_u(x) w) and never evaluates the score at t_end. See the module docstring for the formulas
    and the NFE count.

    Args:
      score: pure ``score(x (N, *shape), t) -> like x``.
      process: the forward process (``dg.VP()`` etc.).
      x_T: (N, *shape) latents at t_max (finite).
      t_end: scalar time strictly inside (t_min, t_max) where alignment is measured.
      key: PRNG key for the Hutchinson probes (score-free form only; one key per sample is split off).
      score_free: track omega instead of evaluating s at t_end.
      w_T: the direction to push forward: None (default) the score ``s_T(x_T)`` at t_max; ``"prior"``
        the Gaussian prior's score ``-x_T / sigma_T^2`` (then ``-sigma_T^2 * value`` is exactly
        d/dc log p_{t_end}(Phi(c x_T)) at c = 1); or an array like x_T. In the score-free form omega
        starts from ``<s_T(x_T), w_T>`` with the given score at t_max.
      divergence: estimator of div_x(J_s(x) w) for the score-free form: ``dg.Hutchinson(K)`` (default
        K = 1; K second-order JVPs per evaluation) or ``dg.Exact()`` (D of them; small D).
      redraw_probes: score-free form: draw fresh Hutchinson probes at every step instead of once per solve
        (docs/math.md 4 allows it for fixed-step solvers). Default (None): redrawn whenever the steps are constant
        (``steps=`` or ``grid=``), with any solver, as the published code does; fixed for adaptive solves
        (``rtol``/``atol``), whose controller cannot step a field that changes at random (``True`` with
        adaptive steps raises). omega does not feed back into x or w, so its solve is a quadrature of
        unbiased estimates: it stays unbiased. The probes change per step, not per stage (a stage at a
        step's end, c = 1, takes the next step's), so Runge-Kutta weights of either sign (Tsit5's reach
        -3.3) act on one smooth field. Rademacher probes (the default) are the rows of a randomly signed
        Hadamard matrix taken in turn (``Hutchinson.draw_step``): every D' (D rounded up to a power of 2)
        consecutive steps' probes are orthogonal and sum to the exact trace of a fixed matrix, so the
        probe noise cancels along the path instead of averaging as 1/sqrt(steps).
        Measured (``python benchmarks/run_all.py``'s setting: oracle, 8 components, D = 64, N = 256,
        t_end = 0.3, one probe; correlation with the score form over the batch / median relative error),
        fixed vs redrawn: Tsit5 x 64 0.884 / 1.4% vs 0.923 / 0.74%; Tsit5 x 256 0.884 / 1.4% vs 0.973 /
        0.30%; Tsit5 x 1000 0.884 / 1.4% vs 0.9993 / 0.01%; Heun x 1000 0.884 / 1.4% vs 0.9988 / 0.01%;
        Euler x 1000 0.893 / 1.4% vs 0.9967 / 0.02%. Independent redraws (Gaussian probes, or the
        Rademacher ones before the Hadamard cycle) reach Tsit5 x 1000 0.996 / 0.16%.
      solver, steps, grid, rtol, atol, adjoint, max_steps, options: as in ``dg.sample`` (default adaptive Tsit5
        with rtol = atol = 1e-5; the error norm weighs x, w and omega equally).
      return_details: return a ``dg.Alignment`` (value, cosine, aligned_fraction, x_end, w_end, w_T,
        stderr, nfe, num_steps) instead of the (N,) value.

    Returns: the alignment, shape (N,); or ``dg.Alignment`` when ``return_details``.
    Alignment holds at x_T where the value is > 0 (``Alignment.aligned_fraction`` over the batch).
    """
    options = merge_options(options, solver=solver, steps=steps, rtol=rtol, atol=atol, adjoint=adjoint,
                            max_steps=max_steps, grid=grid)
    x_T = check_samples(x_T, "x_T")
    t_end = _check_t_end(process, t_end)
    if divergence is None:
        divergence = Hutchinson()
    elif not isinstance(divergence, (Exact, Hutchinson)):  # the second-order traces are computed here
        raise InvalidArgument(f"divergence: expected dg.Hutchinson(...) or dg.Exact(); got {divergence!r}")
    t_T = jnp.asarray(process.t_max, dtype=x_T.dtype)
    check_score_fn(score, x_T, t_T)
    constant = options.steps is not None or options.grid is not None  # constant steps (a count or a grid)
    steps, ts = grids.plan(process, process.t_max, t_end, options.steps, options.grid)
    options = options.replace(steps=steps, grid=ts)  # what solve steps to: a count (uniform in t) or the times

    w0 = score(x_T, t_T) if w_T is None else _prepare_w_T(w_T, x_T, process)
    s_T = w0 if w_T is None else (score(x_T, t_T) if score_free else None)
    nfe_init = 0 if s_T is None else 1
    if score_free:
        redraw = _redraw_plan(redraw_probes, constant, divergence, options)
        (x_end, w_end, value, stderr), evals, stats = _score_free_solve(score, process, x_T, t_end, w0, s_T, key,
                                                                       divergence, redraw, options)
        cosine, per_eval, nfe_final = None, 2 + 2 * divergence.num_jvps(x_T[0].size), 0
    else:
        (x_end, w_end, value, cosine), evals, stats = _tangent_solve(score, process, x_T, t_end, w0, options)
        stderr, per_eval, nfe_final = jnp.zeros_like(value), 2, 1

    if not return_details:
        return value
    nfe = add_nfe(nfe_init + nfe_final, evals, per_eval)
    return Alignment(value=value, cosine=cosine, aligned_fraction=jnp.mean(value > 0), x_end=x_end,
                     w_end=w_end, w_T=w0, stderr=stderr, nfe=nfe, num_steps=stats["num_steps"])


def _redraw_plan(redraw_probes: bool | None, constant: bool, divergence, options: SolveOptions):
    """What the score-free field draws fresh probes from at each step: None (probes fixed along the path: adaptive
    steps, ``dg.Exact()``, or ``redraw_probes=False``), the number of uniform steps, or the grid's times."""
    if redraw_probes is None:  # default: the measured rule (score_alignment's docstring)
        redraw_probes = constant
    if redraw_probes and not constant:
        raise InvalidArgument("redraw_probes: fresh probes per evaluation need constant steps (pass steps=...); "
                              "an adaptive controller cannot step a vector field that changes at random")
    if not redraw_probes or isinstance(divergence, Exact):  # Exact has no probes to redraw
        return None
    return np.asarray(options.grid) if options.grid is not None else options.steps


def _score_free_solve(score, process, x_T, t_end, w0, s_T, key, divergence, redraw, options):
    """The score-free form: omega_t = <s_t(x_t), w_t> by its rate 1/2 g^2 div_x(J_s(x) w) along the PF-ODE and
    its tangent, from omega_T = <s_T(x_T), w_T>. Returns ((x_end, w_end, value (N,), stderr (N,)), evals, stats)."""
    probes, omega0 = tracking_start(divergence, key, x_T, batch_dot(s_T, w0))
    params, rebuild = split_args(score)
    plan = tuple(float(v) for v in redraw) if isinstance(redraw, np.ndarray) else redraw
    field = _ScoreFreeField(rebuild, process, divergence, process.t_max, t_end, plan)
    args = (jax.random.fold_in(key, 1) if redraw is not None else probes, params)
    (x_end, w_end, omega), evals, stats = solve(field, (x_T, w0, omega0), process.t_max, t_end, args=args,
                                                options=options)
    # the result is omega; x_end (details only) may carry a NaN the score-free form never reads (Tsit5's last
    # stage sits at t_end and enters x with weight 0)
    omega = check_output(omega, "dg.score_alignment: the score-free solve")
    return (x_end, w_end, *dyn.mean_and_stderr(omega)), evals, stats


def _tangent_solve(score, process, x_T, t_end, w0, options):
    """The score form: the PF-ODE and its tangent dw/dt = J_u(x_t) w to t_end, read out as <s_{t_end}, w_{t_end}>.
    Returns ((x_end, w_end, value (N,), cosine (N,)), evals, stats)."""
    params, rebuild = split_args(score)
    (x_end, w_end), evals, stats = solve(_TangentField(rebuild, process), (x_T, w0),
                                         process.t_max, t_end, args=params, options=options)
    x_end, w_end = check_output((x_end, w_end), "dg.score_alignment: the tangent solve")
    s_end = score(x_end, jnp.asarray(t_end, dtype=x_T.dtype))
    value = check_output(batch_dot(s_end, w_end), "dg.score_alignment: the score at t_end")
    denom = _flat_norm(s_end) * _flat_norm(w_end)
    cosine = jnp.where(denom > 0, value / jnp.where(denom > 0, denom, 1.0), 0.0)
    return (x_end, w_end, value, cosine), evals, stats
