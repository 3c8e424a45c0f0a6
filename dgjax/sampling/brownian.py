"""Brownian paths for the SDE solves (``brownian=`` of the SDE samplers and ``dg.forward_sde_logp``).

- ``"steps"``: ``StepBrownianPath``, one key per step of a fixed grid, split once before the solve; step i's
  increment is ``sqrt(t_{i+1} - t_i) * normal(keys[i])``. Fixed steps only (constant or a grid).
- ``"unsafe"``: ``diffrax.UnsafeBrownianPath`` (fresh increments keyed by ``fold_in(key, bits(t0), bits(t1))``;
  fixed steps only).
- ``"virtual"``: ``diffrax.VirtualBrownianTree`` (any step-size controller, consistent at every resolution,
  differentiable).
- ``"auto"`` (default): ``"steps"`` for fixed steps, ``"virtual"`` for adaptive ones.

Why ``"steps"`` is the default for fixed steps: on the CPU JAX lowers each threefry call to a rolled loop, and
``UnsafeBrownianPath.evaluate`` makes three scalar ones per step (two ``fold_in`` and a ``split``) before the
(N, D) draw: dgjax's reverse SDE on the oracle (D = 3072, N = 64, 64 steps) ran 8-17% slower with it
(``python benchmarks/bench_loop_overhead.py``; a bare scan: 15-20%). Splitting the keys of all steps at once makes the
draw the only threefry call of a step. Either way one key reproduces the path exactly.
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._checks import check_param
from ..errors import InvalidArgument

BROWNIAN = ("auto", "steps", "unsafe", "virtual")


class StepBrownianPath(dfx.AbstractBrownianPath):
    """Brownian increments on a fixed grid of knots tau_0 < ... < tau_S, one PRNG key per step.

    ``evaluate(tau_i, tau_{i+1})`` = sqrt(tau_{i+1} - tau_i) * normal(keys[i], shape): i.i.d. N(0, d tau I)
    increments. Only the grid's own steps may be asked for (as by ``diffrax.StepTo`` / ``ConstantStepSize``
    with the solvers the SDE samplers accept, which take one control per step); the step index is read from
    tau_i: arithmetically for uniform knots, i = round((tau_i - tau_0) / dt), by ``searchsorted`` against the
    midpoints otherwise. The knots may start anywhere (``dg.forward_sde_logp`` steps over [t_start, t_end]).
    """

    shape: jax.ShapeDtypeStruct = eqx.field(static=True)
    keys: jax.Array  # (S,) PRNG keys
    mids: jax.Array | None  # (S,) midpoints of the steps, None for uniform knots
    dt: float = eqx.field(static=True)  # the uniform step (unused for a non-uniform grid)
    tau0: float = eqx.field(static=True, default=0.0)  # the first knot (uniform knots)
    levy_area: type = eqx.field(static=True, default=dfx.BrownianIncrement)

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def step_index(self, tau):
        n = self.keys.shape[0]
        if self.mids is None:
            i = jnp.round((tau - self.tau0) / self.dt).astype(jnp.int32)
        else:
            i = jnp.searchsorted(self.mids, tau).astype(jnp.int32)
        return jnp.clip(i, 0, n - 1)

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        del left
        if use_levy:
            raise InvalidArgument("brownian: 'steps' paths give Brownian increments only (no Levy area); use "
                                  "brownian='virtual' for solvers that need it")
        if t1 is None:
            raise InvalidArgument("StepBrownianPath gives increments over a step: evaluate(t0, t1)")
        t0 = jax.lax.stop_gradient(t0)
        t1 = jax.lax.stop_gradient(t1)
        w = jax.random.normal(self.keys[self.step_index(t0)], self.shape.shape, self.shape.dtype)
        return w * jnp.sqrt(t1 - t0).astype(self.shape.dtype)


def step_path(key, shape, dtype, knots) -> StepBrownianPath:
    """A ``StepBrownianPath`` on ``knots`` (a concrete increasing array, S + 1 entries)."""
    knots = np.asarray(knots, np.float64)
    steps = len(knots) - 1
    diffs = np.diff(knots)
    uniform = bool(np.allclose(diffs, diffs[0], rtol=1e-6, atol=0.0))
    mids = None if uniform else jnp.asarray(0.5 * (knots[:-1] + knots[1:]), dtype)  # step i: m_{i-1} < tau_i < m_i
    # keywords: type checkers put the base class's abstract levy_area first in the generated __init__
    return StepBrownianPath(shape=jax.ShapeDtypeStruct(shape, dtype), keys=jax.random.split(key, steps), mids=mids,
                            dt=float(diffs[0]), tau0=float(knots[0]))


def brownian_path(kind: str, key, shape, dtype, span: float, steps: int | None, knots=None, t0: float = 0.0):
    """The Brownian motion over [t0, t0 + span] for a solve (see the module docstring for the choice).
    ``steps``: the number of fixed steps over that interval, or None for adaptive ones; ``knots``: a
    non-uniform grid's step ends (then ``steps`` is its step count). A "steps" path's keys are laid out for
    exactly the solve's steps: one key per step from t0, none shared."""
    check_param(kind in BROWNIAN, "brownian", f"must be one of {BROWNIAN}; got {kind!r}")
    if kind == "auto":
        kind = "steps" if steps is not None else "virtual"
    struct = jax.ShapeDtypeStruct(shape, dtype)
    if kind in ("steps", "unsafe"):
        if steps is None:
            raise InvalidArgument(f"brownian: {kind!r} Brownian paths need fixed steps (steps=...); use 'virtual' with "
                                  "rtol/atol")
        # a traced step count: keys cannot be split ahead
        if kind == "unsafe" or (knots is None and isinstance(steps, jax.core.Tracer)):
            return dfx.UnsafeBrownianPath(shape=struct, key=key)
        if knots is None:
            knots = np.linspace(t0, t0 + span, int(steps) + 1)
        return step_path(key, shape, dtype, knots)
    tol = span / (8 * steps) if steps is not None else span * 1e-6
    return dfx.VirtualBrownianTree(t0, t0 + span, tol=tol, shape=struct, key=key)


def default_adjoint(path, adjoint=None):
    """``adjoint`` if given, else ``diffrax.ForwardMode()`` for the fixed-step paths (fresh per-step increments:
    no reverse mode through them; use brownian="virtual" for gradients) and None (diffrax's default) otherwise."""
    if adjoint is None and isinstance(path, (dfx.UnsafeBrownianPath, StepBrownianPath)):
        return dfx.ForwardMode()
    return adjoint
