"""The mode-tracking ODE (docs/math.md section 9; Cartoonists, Thm 5 and Fig. 1): a sampler that follows the
mode of the denoising density p(x_s | x_t) from an observed x_t at s = t down to t_end (``dg.denoise``,
``dgjax.denoising``, wraps it).

For s < t the denoising density is ``p(x_s = y | x_t) ∝ p_s(y) N(x_t; a y, v I)`` with
``a = alpha_t / alpha_s`` and ``v = sigma_t^2 - a^2 sigma_s^2`` (``process.transition(s, t)``). Its mode y_s follows

    dy/ds = f y - g^2 s(y) - 1/2 g^2 H_q^{-1} grad Lap(y),     H_q = H(y) - (a^2 / v) I,

from y_t = x_t at s = t down to t_end. With ``c = v / a^2`` (0 at s = t) this is written without the
singular a^2 / v:  ``H_q^{-1} = -c (I - c H)^{-1}``, so

    dy/ds = f y - g^2 s(y) + 1/2 g^2 c z,     (I - c H) z = grad Lap(y),

and ``I - c H`` is positive definite exactly while H_q is negative definite (the mode exists). z comes
from conjugate gradients (lineax ``CG``) on that operator, matrix-free with Hessian-vector products
(JVPs of the score). grad Lap is the gradient of the divergence estimator's Laplacian: exact with
``dg.Exact()`` (small D), or the gradient of a Hutchinson estimate ``v^T H v`` with probes held fixed
along the path. Dropping the last term is the HD-ODE (docs/math.md 5), exact when p_0 is Gaussian.

The velocity needs the score *function* (Hessian-vector products), not only its value at (x, t): it gets
it, with the divergence estimator and the solve's probes, as the keywords ``score``, ``divergence`` and
``probes`` of the phase velocity (``sampling/ode.py``). Pure math
(``mode_correction``, ``mode_drift``) is kept apart from the sampler plumbing (``ModeTracking``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax.scipy.sparse.linalg import bicgstab as jsp_bicgstab

from .. import dynamics as dyn
from .._checks import bcast, check_param, check_value, event_dim
from ..errors import InvalidArgument, LinearSolveFailed, ModeBifurcation, NonFiniteError
from .base import Cost
from .ode import ODESampler

_BIFURCATION_MSG = (
    "mode tracking: the denoising density p(x_s | x_t) lost its negative-definite Hessian at the tracked "
    "mode (H_q = H - (a^2/v) I is no longer negative definite): the mode bifurcates or vanishes here "
    "(docs/math.md section 9), and the ODE cannot be continued through it. Stop earlier (a larger t_end), start "
    "from a smaller t, or use method='hd' (the HD-ODE approximation, defined everywhere). (An improper score, "
    "e.g. one that grows with |x|, has no mode to follow and stops here too.)")
def _solve_msg(solver) -> str:
    name = {lx.CG: "conjugate gradients (lineax CG)", lx.GMRES: "GMRES (lineax)",
            lx.BiCGStab: "BiCGStab (jax.scipy)"}.get(type(solver), type(solver).__name__)
    return (f"mode tracking: the linear solve of (I - c H) z = grad Lap by {name} did not reach the tolerance in "
            f"its max_steps (cg_steps) iterations (relative residual above cg_tol): the operator is ill-conditioned "
            f"(near a bifurcation of the mode) or the step bound is too small for this dimension. Raise cg_steps "
            f"(at most D is exact in exact arithmetic) or cg_tol, or try another linear_solver.")


_NONFINITE_MSG = (
    "mode tracking: the gradient of the score's Laplacian (grad Lap, the right-hand side of the mode's linear "
    "solve) is NaN or inf: the score returned non-finite values or is not differentiable here (check the model's "
    "parameters and inputs)")
LANCZOS_STEPS = 10  # default Lanczos iterations (HVPs) per evaluation for check="lanczos"
KrylovSolver = lx.CG | lx.GMRES | lx.BiCGStab  # the lineax solvers ModeTracking accepts (each with max_steps)


def lanczos_top_eigenvalue(matvec: Callable, v0, steps: int):
    """Largest Ritz value of a symmetric operator after ``steps`` Lanczos iterations from ``v0`` (full
    reorthogonalisation): a lower bound on its largest eigenvalue that reaches it within ``steps`` = the number
    of distinct eigenvalues, and converges fastest for a well-separated top one (the direction along which a
    mode splits). matvec maps an array like v0 to one like it; ``steps`` HVPs. (jax.experimental's LOBPCG
    needs D > 5 and runs a data-dependent number of iterations: a fixed count keeps the cost declared.)
    """
    shape, dtype = v0.shape, v0.dtype
    q0 = jnp.reshape(v0, (-1,))
    q0 = q0 / jnp.sqrt(jnp.sum(q0 * q0))
    basis = jnp.zeros((steps, q0.size), dtype)
    small = jnp.sqrt(jnp.finfo(dtype).eps)

    def body(j, carry):
        basis, alphas, betas, q = carry
        basis = basis.at[j].set(q)
        w = jnp.reshape(matvec(jnp.reshape(q, shape)), (-1,))
        wnorm = jnp.sqrt(jnp.sum(w * w))
        alpha = jnp.sum(q * w)
        for _ in range(2):  # full reorthogonalisation against every basis vector so far (twice is enough)
            w = w - basis.T @ (basis @ w)
        beta = jnp.sqrt(jnp.sum(w * w))
        # an invariant subspace is exhausted: stop (zero rows add zero Ritz values, never a false alarm)
        done = beta <= small * jnp.maximum(wnorm, jnp.finfo(dtype).tiny)
        q = jnp.where(done, 0.0, w / jnp.where(done, 1.0, beta))
        return basis, alphas.at[j].set(alpha), betas.at[j].set(jnp.where(done, 0.0, beta)), q

    init = (basis, jnp.zeros(steps, dtype), jnp.zeros(steps, dtype), q0)
    _, alphas, betas, _ = jax.lax.fori_loop(0, steps, body, init)
    off = betas[:-1]
    tri = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tri)[-1]


def check_probe(shape, dtype):
    """The fixed start vector of the curvature and Lanczos checks: a pseudo-random normal vector (a constant,
    the same for every sample and step), generic, so no eigenvector is orthogonal to it."""
    return jax.random.normal(jax.random.key(0), shape, dtype)


def krylov_solver(linear_solver: str, steps: int, cg_tol: float, dim: int) -> KrylovSolver:
    """The lineax solver a ``ModeTracking`` shorthand names, for the system scaled to |b| = 1: it stops once every
    entry of the residual is below 0.1 cg_tol / sqrt(D) (so |r| <= 0.1 cg_tol |b|), after at most ``steps``
    iterations (iterating past convergence would break CG down, 0/0). GMRES: one Krylov cycle of ``steps``
    vectors (lineax's first "step" only forms the residual, so max_steps=2 is one real cycle; max_steps=1 would
    return the zero initial guess). BiCGStab: up to ``steps`` iterations of 2 HVPs (steps // 2 left it 1e-7 short
    of the D = 8 oracle's exact z)."""
    atol = 0.1 * cg_tol / math.sqrt(dim)
    if linear_solver == "cg":
        return lx.CG(rtol=0.0, atol=atol, max_steps=steps)
    if linear_solver == "gmres":
        return lx.GMRES(rtol=0.0, atol=atol, max_steps=2, restart=steps)
    return lx.BiCGStab(rtol=0.0, atol=atol, max_steps=steps)


def mode_correction(score_fn: Callable, laplacian_fn: Callable, x, c, *, cg_steps: int | None = None, cg_tol: float,
                    check: str, symmetrize: bool = False, linear_solver: str | lx.AbstractLinearSolver = "cg",
                    lanczos_steps: int = LANCZOS_STEPS):
    """z = (I - c H)^{-1} grad Lap(x) per sample (docs/math.md 9), with the checks described in ``ModeTracking``.

    score_fn(z (N, *shape)) -> like z; laplacian_fn(z) -> (N,) (per sample, so the gradient of the sum is
    the per-sample gradient). c scalar >= 0. Returns z like x.
    H is the score's Jacobian J (``symmetrize=False``) or its symmetric part (J + J^T)/2; the solve is the lineax
    solver ``linear_solver`` (``lx.CG``, which needs I - c H symmetric positive definite, ``lx.GMRES`` or
    ``lx.BiCGStab``, on the system scaled to |b| = 1), or the one its shorthand "cg", "gmres", "bicgstab" names
    with ``cg_steps`` and ``cg_tol`` (``krylov_solver``). ``cg_tol`` is the accepted relative residual either way.
    ``lx.BiCGStab`` runs as ``jax.scipy.sparse.linalg.bicgstab`` with its tolerances and max_steps (see below). A
    non-finite grad Lap (a NaN score) raises ``NonFiniteError`` first.
    Cost in score-evaluation units: the Laplacian estimate and its gradient (see ``ModeTracking.cost``),
    the solver's HVPs (``solver_hvps``; each two with ``symmetrize``), one HVP for the residual check, and the
    check's (``check_hvps``): D for ``"dense"``, ``lanczos_steps`` for ``"lanczos"``, 1 for ``"curvature"``.
    """
    grad_lap = jax.grad(lambda z: jnp.sum(laplacian_fn(z)))(x)
    # a NaN score would surface as a failed solve or a bifurcation: name the cause first (the solve depends on it)
    grad_lap = check_value(grad_lap, ~jnp.all(jnp.isfinite(grad_lap)), _NONFINITE_MSG, cls=NonFiniteError)
    c = jnp.asarray(c, x.dtype)
    d, shape = event_dim(x), x.shape[1:]
    solver = (krylov_solver(linear_solver, d if cg_steps is None else cg_steps, cg_tol, d)
              if isinstance(linear_solver, str) else linear_solver)

    def one(xi, bi):  # per sample (vmapped): CG on I - c H_i, matrix-free with JVPs of the score
        one_score = lambda z: score_fn(z[None])[0]  # noqa: E731
        _, hvp = jax.linearize(one_score, xi)
        if symmetrize:  # a learned score's Jacobian is not exactly symmetric: use its symmetric part
            jvp_only, (_, vjp) = hvp, jax.vjp(one_score, xi)
            hvp = lambda w: 0.5 * (jvp_only(w) + vjp(w)[0])  # noqa: E731

        def mv(w):
            return w - c * hvp(w)

        # solve for b / |b| (linear: z scales back): lineax's GMRES tests breakdown in absolute terms and returned
        # z = 0 for a tiny grad Lap (a point deep inside one Gaussian component of the oracle)
        bnorm = jnp.sqrt(jnp.sum(bi * bi))
        scale = jnp.where(bnorm > 0, bnorm, 1.0)
        tags = lx.positive_semidefinite_tag if isinstance(solver, lx.CG) else ()  # SPD while the mode exists
        op = lx.FunctionLinearOperator(mv, jax.eval_shape(lambda: xi), tags=tags)
        if isinstance(solver, lx.BiCGStab):
            # jax.scipy's BiCGStab stops on the residual alone; lineax's also wants its last step below atol, so
            # it iterates once past convergence and breaks down there (0/0: NaN for every sample of a float32
            # D = 2 mixture). Started at z = b, the solution at c = 0.
            zn, _ = jsp_bicgstab(mv, bi / scale, x0=bi / scale, tol=solver.rtol, atol=solver.atol,
                                 maxiter=solver.max_steps)
        else:
            zn = lx.linear_solve(op, bi / scale, solver, throw=False).value
        zi = scale * zn
        zi = jnp.where(c > 0, zi, bi)  # c = 0 at s = t: the operator is I (BiCGStab breaks down on it, 0/0)
        res = mv(zi) - bi
        rel = jnp.sqrt(jnp.sum(res * res)) / jnp.maximum(jnp.sqrt(jnp.sum(bi * bi)), jnp.finfo(xi.dtype).tiny)
        # positive curvature along the solution (necessary for I - cH > 0; catches most crossings)
        bad = jnp.sum(zi * mv(zi)) < 0
        if check in ("lanczos", "curvature"):
            # the symmetric part of H: w^T (I - cJ) w > 0 for all w <=> c * its top eigenvalue < 1. CG takes J
            # symmetric already (the exact score); otherwise (J + J^T)/2 from a JVP and a VJP
            if symmetrize or isinstance(solver, lx.CG):
                sym = hvp
            else:
                jvp_only, (_, vjp) = hvp, jax.vjp(lambda z: score_fn(z[None])[0], xi)
                sym = lambda w: 0.5 * (jvp_only(w) + vjp(w)[0])  # noqa: E731
            u = check_probe(shape, xi.dtype)
            if check == "lanczos":  # a pitchfork at z's blind spot (grad Lap = 0 on a symmetry plane) too
                bad = bad | (c * lanczos_top_eigenvalue(sym, u, min(lanczos_steps, d)) >= 1.0)
            else:  # one fixed generic direction: sees I - cH turning indefinite everywhere (an improper score)
                bad = bad | (jnp.sum(u * (u - c * sym(u))) < 0)
        if check == "dense":  # exact: largest eigenvalue of c H below 1, from the full Hessian (D HVPs)
            basis = jnp.reshape(jnp.eye(d, dtype=xi.dtype), (d,) + shape)
            hess = jnp.reshape(jax.lax.map(hvp, basis), (d, d))  # row j = H e_j (H symmetric)
            # the symmetric part: w^T (I - cJ) w > 0 for all w <=> c * its top eigenvalue < 1 (J non-symmetric too)
            lam = jnp.linalg.eigvalsh(0.5 * (hess + hess.T))[-1]
            bad = bad | (c * lam >= 1.0)
        return zi, rel, bad

    z, rel, bad_pd = jax.vmap(one)(x, grad_lap)
    z = check_value(z, jnp.any(bad_pd), _BIFURCATION_MSG, cls=ModeBifurcation)
    bad_cg = ~(rel <= cg_tol)  # NaN (CG breakdown on an indefinite operator) counts as failure
    return check_value(z, jnp.any(bad_cg & ~bad_pd), _solve_msg(solver), cls=LinearSolveFailed)


def check_hvps(check: str, dim: int, symmetrize: bool, cg: bool, lanczos_steps: int) -> int:
    """Score JVP/VJP evaluations of ``mode_correction``'s bifurcation check per sample: ``"dense"`` D HVPs,
    ``"lanczos"`` min(lanczos_steps, D), ``"curvature"`` 1 (the fixed probe); each HVP two with symmetrize, and
    the Lanczos and probe HVPs on the symmetric part also two for GMRES/BiCGStab (``cg`` False) without
    symmetrize."""
    k = 2 if symmetrize else 1
    if check == "dense":
        return k * dim
    ks = 1 if (cg and not symmetrize) else 2
    return ks * (min(lanczos_steps, dim) if check == "lanczos" else 1)


def solver_hvps(solver: KrylovSolver) -> int:
    """HVPs of one solve at its bound (counted with lineax 0.0.x, no early stop): CG ``max_steps`` (the project's
    long-standing count; lineax also forms one initial residual), GMRES ``(max_steps - 1) restart + 2`` (the
    residual pass and the cycles'), BiCGStab ``2 max_steps + 1``."""
    steps = solver.max_steps
    if steps is None:
        raise InvalidArgument("linear_solver: give the lineax solver a max_steps (it bounds the work per evaluation)")
    if isinstance(solver, lx.CG):
        return steps
    if isinstance(solver, lx.GMRES):
        return (steps - 1) * solver.restart + 2
    return 2 * steps + 1


def mode_drift(coeffs, x, s, z, c):
    """The mode-tracking drift ``f y - g^2 s + 1/2 g^2 c z`` (docs/math.md 9; the HD-ODE drift when c z = 0)."""
    _, _, _, g2 = coeffs
    return dyn.hd_drift(coeffs, x, s) + 0.5 * bcast(g2 * c, x) * z


# ------------------------------------------------------------------------------------------------------
# the sampler
# ------------------------------------------------------------------------------------------------------
def _py_scalar(v: Any) -> Any:
    """A NumPy integer or float option as the Python number (static fields must be hashable Python values)."""
    return v.item() if isinstance(v, (np.integer, np.floating)) else v


class ModeTracking(ODESampler):
    """The mode-tracking ODE (docs/math.md 9) as a ``dg.sample`` sampler: started at x_t at ``t_start`` (any time),
    it follows the mode of ``p(x_s | x_t)`` down to t_end. ``dg.sample(score, process, x_t,
    sampler=dg.ModeTracking(), t_start=t, ...)``; ``track_logp`` follows docs/math.md 4(b) with v = this drift (give
    ``logp_T`` = log p_t(x_t), e.g. from ``dg.denoise(..., track_logp=True)`` which computes it).

    grad Lap uses ``dg.sample``'s ``divergence``: ``dg.Exact()`` (exact, small D) or ``dg.Hutchinson(K)``
    (gradient of the Hutchinson estimate, probes fixed along the path; pass ``key``).

    Args:
      cg_steps: the most conjugate-gradient iterations per evaluation (CG stops once the residual is 10x
        below cg_tol); default min(D, 64). In exact arithmetic D iterations solve exactly.
      cg_tol: largest accepted relative residual |(I - cH) z - grad Lap| / |grad Lap|; above it a clear
        error is raised (never a silent inaccurate step). Default 1e-8 (float64) or 1e-4 (float32).
      symmetrize: use the symmetric part (J + J^T)/2 of the score's Jacobian J as H (one more VJP per HVP).
        For a learned score, whose Jacobian J is not symmetric, so that CG on I - cJ fails.
      linear_solver: a lineax solver for (I - cH) z = grad Lap, on the system scaled to |grad Lap| = 1:
        ``lx.CG(rtol, atol, max_steps)`` (needs I - cH symmetric positive definite, i.e. the exact score or
        ``symmetrize=True``), ``lx.GMRES(rtol, atol, max_steps, restart)`` or ``lx.BiCGStab(rtol, atol,
        max_steps)`` (no symmetry assumed: they solve with the learned score's own J); ``max_steps`` must be
        set (it bounds the cost). Shorthands: ``"cg"`` (default), ``"gmres"``, ``"bicgstab"`` build the solver
        from ``cg_steps`` and ``cg_tol`` (``krylov_solver``), which then steer only that shorthand (GMRES: one
        cycle of cg_steps vectors; BiCGStab: cg_steps iterations of 2 HVPs). The mode's equation
        s(y) = (y - x_t / a) / c differentiates (implicit function theorem) to I - cJ with the full J: GMRES
        keeps that operator, ``symmetrize`` changes it by O(c |J - J^T|) (the Fokker-Planck part of the drift
        is exact only for an exact score, either way). The negative-definiteness check is on the symmetric
        part (sufficient). When J is symmetric all choices give the same z (tested).
      check: how loss of negative definiteness of H_q (c lambda_max(H) >= 1) is detected; every check also
        tests the sign of z^T (I - cH) z and the solve's convergence. ``"dense"``: the largest eigenvalue of
        c H from the full Hessian (D extra HVPs; exact; default for D <= 64). ``"lanczos"``: that eigenvalue
        estimated by ``lanczos_steps`` Lanczos iterations (HVPs) from a fixed generic vector (default for
        D > 64: a symmetric pitchfork, whose grad Lap is orthogonal to the splitting direction, is seen at
        any D). ``"curvature"``: the sign of u^T (I - cH) u along one fixed generic u (1 HVP; sees an
        operator turning indefinite in most directions, e.g. an improper score, not a pitchfork). A detected
        bifurcation raises ``dg.ModeBifurcation``; a failed solve ``dg.LinearSolveFailed``.
      lanczos_steps: Lanczos iterations of ``check="lanczos"`` (default 10; at most D are used).

    Cost per vector-field evaluation, in score-evaluation units (a JVP or VJP of the score counts one):
    1 (score) + 2P (Laplacian estimate, P JVPs, and its gradient, P VJPs; P = D for Exact, K for
    Hutchinson) + cg_steps + 1 (CG HVPs and the residual check; see ``solver_hvps`` for GMRES/BiCGStab; x2
    with symmetrize) [+ D for check="dense", min(lanczos_steps, D) for "lanczos", 1 for "curvature"]; plus the
    tracking's own divergence when ``track_logp``; declared by ``cost`` (two divergence passes, three when
    tracking, and the D-dependent HVPs, ``check_hvps``). ``Sample.nfe`` counts this with the CG iterations at
    their bound cg_steps (an upper bound of the NFE; exact when CG needs all of them).
    """

    cg_steps: int | None = eqx.field(static=True, default=None, converter=_py_scalar)
    symmetrize: bool = eqx.field(static=True, default=False)
    cg_tol: float | None = eqx.field(static=True, default=None, converter=_py_scalar)
    check: str = eqx.field(static=True, default="auto")
    linear_solver: str | KrylovSolver = eqx.field(static=True, default="cg")
    lanczos_steps: int = eqx.field(static=True, default=LANCZOS_STEPS, converter=_py_scalar)
    needs_divergence: ClassVar[bool] = False  # its velocity estimates its own Laplacian

    def __check_init__(self):
        def is_int(v):  # a Python or NumPy integer, not a bool
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        check_param(self.cg_steps is None or (is_int(self.cg_steps) and self.cg_steps >= 1), "cg_steps",
                    f"must be an integer >= 1 or None; got {self.cg_steps!r}")
        check_param(self.cg_tol is None or (isinstance(self.cg_tol, (int, float, np.floating)) and not
                                            isinstance(self.cg_tol, bool) and 0 < self.cg_tol < float("inf")),
                    "cg_tol", f"must be a finite positive number or None; got {self.cg_tol!r}")
        check_param(isinstance(self.symmetrize, (bool, np.bool_)), "symmetrize",
                    f"must be True or False; got {self.symmetrize!r}")
        check_param(self.check in ("auto", "dense", "lanczos", "curvature"), "check",
                    f"must be 'auto', 'dense', 'lanczos' or 'curvature'; got {self.check!r}")
        check_param(is_int(self.lanczos_steps) and self.lanczos_steps >= 1, "lanczos_steps",
                    f"must be an integer >= 1; got {self.lanczos_steps!r}")
        if isinstance(self.linear_solver, (lx.CG, lx.GMRES, lx.BiCGStab)):
            check_param(self.linear_solver.max_steps is not None, "linear_solver",
                        "give the lineax solver a max_steps (it bounds the work per evaluation)")
        else:
            check_param(isinstance(self.linear_solver, str) and self.linear_solver in ("cg", "gmres", "bicgstab"),
                        "linear_solver", f"must be lx.CG, lx.GMRES or lx.BiCGStab (with max_steps), or the shorthand "
                        f"'cg', 'gmres' or 'bicgstab'; got {self.linear_solver!r}")

    def _steps(self, dim):
        return min(dim, 64) if self.cg_steps is None else self.cg_steps

    def _tol(self, dtype):
        return self.cg_tol if self.cg_tol is not None else (1e-8 if dtype == jnp.float64 else 1e-4)

    def _solver(self, dim, tol) -> KrylovSolver:
        if isinstance(self.linear_solver, str):
            return krylov_solver(self.linear_solver, self._steps(dim), tol, dim)
        return self.linear_solver

    def _check(self, dim):
        return ("dense" if dim <= 64 else "lanczos") if self.check == "auto" else self.check

    def cost(self, track: bool) -> Cost:
        # divergence passes: the Laplacian estimate and its gradient (+ the tracking's own); the CG HVPs, the
        # residual check and the dense check grow with D (one more VJP each with symmetrize)
        k = 2 if self.symmetrize else 1

        def hvps(dim: int) -> int:
            solve = solver_hvps(self._solver(dim, 1.0))
            return k * (solve + 1) + check_hvps(self._check(dim), dim, self.symmetrize,
                                                isinstance(self._solver(dim, 1.0), lx.CG), self.lanczos_steps)

        return Cost(divergence_passes=2 + int(track), extra_jvps=hvps)

    def phases(self, process, t_start, t_end):
        t_data = t_start  # the time of the observed x_t

        def velocity(coeffs, x, s, *, t, score, divergence, probes, **_):
            dim = event_dim(x)

            def score_fn(z):
                return score(z, t)

            def laplacian_fn(z):  # (N,): the estimator's mean Laplacian, with this solve's fixed probes
                return jnp.mean(divergence.value_and_traces(score_fn, z, probes)[1], axis=0)

            c = process.transition(jnp.asarray(t, x.dtype), jnp.asarray(t_data, x.dtype)).c
            tol = self._tol(x.dtype)
            z = mode_correction(score_fn, laplacian_fn, x, c, cg_tol=tol, check=self._check(dim),
                                symmetrize=self.symmetrize, linear_solver=self._solver(dim, tol),
                                lanczos_steps=self.lanczos_steps)
            return mode_drift(coeffs, x, s, z, c)

        return [(t_start, t_end, velocity)]
