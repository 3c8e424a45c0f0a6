"""Step grids for constant-step solves (``steps=`` with ``grid=``).

A grid is the list of times a constant-step solve steps to, from t0 to t1 (either direction); diffrax
steps exactly to them (``diffrax.StepTo``). Named grids place ``steps + 1`` points uniformly in a warped
coordinate of the process (lambda_t = log-SNR, s_t = sigma_t / alpha_t = exp(-lambda_t / 2)):

    "t"        uniform in t                      (dgjax's historical choice)
    "log_snr"  uniform in lambda_t               (the published code's choice)
    "edm"      uniform in s_t^(1/rho), rho = 7   (Karras et al. 2022, eq. 5, written in s = sigma/alpha so it
                                                  applies to any process; for EDM itself s = sigma = t)

or an explicit array of times (strictly monotone, from t0 to t1, inside [t_min, t_max]). The grids are small
objects, as diffrax's ``StepTo``: ``UniformGrid()``, ``LogSNRGrid()``, ``EDMGrid(rho=7)``, ``TimesGrid(times)``;
the strings "t", "log_snr", "edm" and a plain array are shorthands for them, resolved here (``as_grid``) only.

Each process names its default grid in ``Process.default_grid`` (chosen by ``benchmarks/bench_grids.py``,
stated in each process's docstring); ``grid=None`` with ``steps`` uses it. Grid times are computed in
float64 (numpy, with the process evaluated under x64) by bisection on lambda_t, which every process
makes strictly decreasing in t; the endpoints are t0 and t1 exactly.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._checks import check_int, check_param
from .errors import InvalidArgument

GRIDS = ("t", "log_snr", "edm")
EDM_RHO = 7.0


def _x64():
    return jax.enable_x64(True)


def _log_snr64(process, t: np.ndarray) -> np.ndarray:
    with _x64(), jax.ensure_compile_time_eval():  # concrete numbers, also while a caller is being traced
        return np.asarray(process.log_snr(np.asarray(t, np.float64)), np.float64)


@functools.partial(jax.jit, static_argnums=0)  # compiled once per process (its fields are static)
def _time_of_log_snr(process, lam):
    return process.time_of_log_snr(lam)


def _time_of_log_snr64(process, lam: np.ndarray) -> np.ndarray:
    """``process.time_of_log_snr`` in float64, as concrete numbers (also while a caller is being traced)."""
    with _x64(), jax.ensure_compile_time_eval():
        return np.asarray(_time_of_log_snr(process, np.asarray(lam, np.float64)), np.float64)


def _by_log_snr(process, lo: float, hi: float, u: np.ndarray, name: str, lam_of) -> np.ndarray:
    """Times on [lo, hi] with lambda_t = ``lam_of(lam_lo, lam_hi, u)`` for the fractions u (0 and 1 map to lo, hi)."""
    lam_lo, lam_hi = _log_snr64(process, np.array([lo, hi]))
    if not lam_lo > lam_hi:
        raise InvalidArgument(f"grid: {name} needs a log-SNR strictly decreasing in t, but {type(process).__name__} "
                              f"has lambda({lo}) = {lam_lo} <= lambda({hi}) = {lam_hi}; use dg.UniformGrid() or an "
                              "array")
    ts = _time_of_log_snr64(process, lam_of(lam_lo, lam_hi, u[1:-1]))
    return np.concatenate([[lo], ts, [hi]])


class AbstractGrid(abc.ABC):
    """Where the constant steps of a solve go (``grid=`` of ``dg.sample`` and the other entry points)."""

    @abc.abstractmethod
    def ascending(self, process, lo: float, hi: float, steps: int | None) -> np.ndarray:
        """The step ends from lo to hi (lo < hi), float64, strictly increasing, lo and hi exactly."""


@dataclasses.dataclass(frozen=True)
class UniformGrid(AbstractGrid):
    """Uniform in t (shorthand "t"): constant steps, traceable step counts and ends (diffrax ConstantStepSize)."""

    def ascending(self, process, lo, hi, steps):
        return lo + (hi - lo) * np.linspace(0.0, 1.0, check_int(steps, "steps") + 1)


@dataclasses.dataclass(frozen=True)
class LogSNRGrid(AbstractGrid):
    """Uniform in the log-SNR lambda_t (shorthand "log_snr"; the published code's choice)."""

    def ascending(self, process, lo, hi, steps):
        u = np.linspace(0.0, 1.0, check_int(steps, "steps") + 1)
        return _by_log_snr(process, lo, hi, u, "LogSNRGrid", lambda a, b, v: a + (b - a) * v)


@dataclasses.dataclass(frozen=True)
class EDMGrid(AbstractGrid):
    """Uniform in s_t^(1/rho), s = sigma/alpha = exp(-lambda/2) (shorthand "edm", rho = 7; Karras et al. 2022,
    eq. 5)."""

    rho: float = EDM_RHO

    def __post_init__(self):
        check_param(isinstance(self.rho, (int, float)) and 0 < self.rho < float("inf"), "rho",
                    f"must be a finite positive number; got {self.rho!r}")

    def ascending(self, process, lo, hi, steps):
        u = np.linspace(0.0, 1.0, check_int(steps, "steps") + 1)
        rho = float(self.rho)

        def lam_of(lam_lo, lam_hi, v):
            a, b = np.exp(-lam_lo / (2 * rho)), np.exp(-lam_hi / (2 * rho))
            return -2.0 * rho * np.log(a + (b - a) * v)

        return _by_log_snr(process, lo, hi, u, f"EDMGrid(rho={rho:g})", lam_of)


@dataclasses.dataclass(frozen=True, eq=False)
class TimesGrid(AbstractGrid):
    """An explicit grid: the times (1-D, at least 2, strictly monotone, finite) a solve steps to, in either
    direction; it must run between the solve's ends and lie inside the process's [t_min, t_max]."""

    times: np.ndarray

    def __post_init__(self):
        arr = np.asarray(self.times, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < 2:
            raise InvalidArgument(f"grid: an explicit grid must be a 1-D array of at least 2 times; "
                                  f"got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise InvalidArgument("grid: the explicit grid contains NaN or inf")
        d = np.diff(arr)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise InvalidArgument("grid: an explicit grid must be strictly monotone (all times increasing or all "
                                  "decreasing, no repeats)")
        object.__setattr__(self, "times", arr)

    @property
    def steps(self) -> int:
        return self.times.shape[0] - 1

    def ascending(self, process, lo, hi, steps):
        ts = np.sort(self.times)
        out = (ts < process.t_min) | (ts > process.t_max)
        if np.any(out):
            raise InvalidArgument(f"grid: times {ts[out][:3]} leave [{process.t_min}, {process.t_max}], the time range "
                                  f"of {type(process).__name__}")
        if not (np.isclose(ts[0], lo, rtol=1e-9, atol=1e-12) and np.isclose(ts[-1], hi, rtol=1e-9, atol=1e-12)):
            raise InvalidArgument(f"grid: an explicit grid must run from one end of the solve to the other ({lo} and "
                                  f"{hi}, in either direction); it spans [{ts[0]}, {ts[-1]}]")
        return ts


_SHORTHANDS = {"t": UniformGrid, "log_snr": LogSNRGrid, "edm": EDMGrid}


def as_grid(grid) -> AbstractGrid | None:
    """The grid object for ``grid``: None stays None; "t", "log_snr", "edm" are ``UniformGrid()``, ``LogSNRGrid()``,
    ``EDMGrid()``; an array of times is ``TimesGrid(times)``; a grid object is itself. The one place the shorthands
    are resolved."""
    if grid is None or isinstance(grid, AbstractGrid):
        return grid
    if isinstance(grid, str):
        if grid not in _SHORTHANDS:
            raise InvalidArgument(f"grid: unknown grid {grid!r}; choose one of {GRIDS}, a dg.UniformGrid(), "
                                  f"dg.LogSNRGrid(), dg.EDMGrid(rho), or an array of times (dg.TimesGrid)")
        return _SHORTHANDS[grid]()
    if isinstance(grid, jax.core.Tracer):
        raise InvalidArgument("grid: the times of an explicit grid must be concrete (not traced under jit): they fix "
                              "the steps at trace time; pass a NumPy array or a list")
    return TimesGrid(grid)


def resolve_grid(process, grid, steps) -> AbstractGrid | None:
    """The grid to use: None (adaptive), or a grid object (the process's ``default_grid`` when only ``steps`` is
    given). Validates the combination of ``steps`` and ``grid`` (a named grid needs steps; an explicit one's
    length fixes them)."""
    if grid is None:
        if steps is None:
            return None
        grid = getattr(process, "default_grid", "t")
    g = as_grid(grid)
    if isinstance(g, TimesGrid):
        if steps is not None and steps != g.steps:
            raise InvalidArgument(f"steps: an explicit grid of {g.steps + 1} times makes {g.steps} steps; "
                                  f"got steps={steps} (drop steps= or make them agree)")
    elif steps is None:
        raise InvalidArgument(f"grid: {g!r} places constant steps, so it needs steps=... (the number of steps); for "
                              f"adaptive steps drop grid=")
    return g


def step_times(process, t0: float, t1: float, steps: int | None = None, grid: Any = None) -> np.ndarray | None:
    """Times (float64, shape (steps + 1,)) a constant-step solve from t0 to t1 steps to.

    Args:
      process: the forward process (gives lambda_t, the time range and the default grid).
      t0, t1: start and end of the solve (concrete; t0 > t1 when sampling, t0 < t1 when encoding).
      steps: number of steps (needed for a named grid; optional for an explicit array).
      grid: "t" | "log_snr" | "edm" | an array of times | None (the process's default when ``steps`` is
        given, else None: adaptive).

    Returns: None when the solve is adaptive (``steps`` and ``grid`` both None); else the times, t0 first
    and t1 last, strictly monotone. An explicit array may be given in either direction; it must run
    between t0 and t1 and lie inside [t_min, t_max].
    """
    g = resolve_grid(process, grid, steps)
    if g is None:
        return None
    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        raise InvalidArgument(f"grid: the solve has zero length (t0 = t1 = {t0})")
    lo, hi = min(t0, t1), max(t0, t1)
    ts = np.array(g.ascending(process, lo, hi, steps), dtype=np.float64)
    ts[0], ts[-1] = lo, hi
    if not np.all(np.diff(ts) > 0):
        raise InvalidArgument(f"grid: the {g!r} grid with steps={steps} on [{lo}, {hi}] has repeated times "
                              f"(too many steps for float64 resolution there); use fewer steps or another grid")
    return ts if t0 < t1 else ts[::-1].copy()


def restrict(ts: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """The part of a grid ``ts`` (running from some t_a to t_b) inside one phase [t0 -> t1], with the phase's
    ends added: the phases of a multi-phase sampler share one grid."""
    t0, t1 = float(t0), float(t1)
    lo, hi = min(t0, t1), max(t0, t1)
    inner = ts[(ts > lo) & (ts < hi)]
    inner = np.sort(inner)
    out = np.concatenate([[lo], inner, [hi]])
    return out if t0 < t1 else out[::-1].copy()


def plan(process, t0, t1, steps, grid):
    """(steps, ts) for ``solve``: uniform-in-t and adaptive solves keep ``steps`` (diffrax ConstantStepSize,
    traceable step counts and ends); other grids give ``ts`` (diffrax StepTo) and steps None."""
    g = resolve_grid(process, grid, steps)
    if g is None or isinstance(g, UniformGrid):
        return steps, None
    if isinstance(steps, jax.core.Tracer) or isinstance(t0, jax.core.Tracer) or isinstance(t1, jax.core.Tracer):
        raise InvalidArgument(f"grid: {g!r} needs a concrete number of steps and concrete solve ends (not traced under "
                              f"jit); pass dg.UniformGrid() (grid='t') for traced ones")
    return None, step_times(process, t0, t1, steps, g)


def _fractional_step(t, t_start, t_end, plan):
    """(t - t_k) / h_k + k for the step k holding ``t``: uniform steps (``plan`` an int) or a grid's times (an
    array, or a tuple: the hashable form a vector-field module keeps as a static field)."""
    t = jnp.asarray(t)
    if isinstance(plan, (np.ndarray, tuple)):
        plan = np.asarray(plan, np.float64)
        ts = plan if plan[0] < plan[-1] else plan[::-1]
        idx = np.arange(len(plan), dtype=np.float64)
        idx = idx if plan[0] < plan[-1] else idx[::-1]
        return jnp.interp(t, jnp.asarray(ts, t.dtype), jnp.asarray(idx, t.dtype))
    return (t - t_start) / (t_end - t_start) * plan


def step_index(t, t_start, t_end, plan):
    """The index k of the constant step whose stages time ``t`` belongs to, for per-step random draws.

    ``plan``: the number of uniform steps from ``t_start`` to ``t_end`` (either direction), or the step times
    of a grid (``plan``'s ``ts``, numpy, monotone). Stages at c in [0, 1) of step k map to k (1e-3 absorbs
    rounding); a stage at a step's end (c = 1) takes the next step's index. (Score-free alignment's draws;
    ``draw_index`` is the log-likelihood's.)
    """
    return jnp.floor(_fractional_step(t, t_start, t_end, plan) + 1e-3).astype(jnp.int32)


def draw_index(t, t_start, t_end, plan, per_step: int = 1):
    """The index of the random draw that a stage at time ``t`` uses, in 0..per_step * steps
    (``dg.StepwiseHutchinson``).

    ``plan`` as in ``step_index``. A stage at c of step k (t = t_k + c h_k) gets ``ceil(per_step (k + c))``
    (1e-3 absorbs rounding). With ``per_step`` = 1: the stages at c in (0, 1] share draw k + 1 and the stage
    at c = 0 gets k, so the point t_k keeps one draw whichever step evaluates it (an FSAL solver's first
    stage, Tsit5's or Dopri5's, is the previous step's last evaluation reused: weight 0 there, Tsit5's
    b_1 = 0.097 here; Heun's two stages at t_k are the trapezoid's node k). ``step_index``'s rule, c = 1 to
    the next step, splits a Tsit5 step between independent draws with weights -1.32 (c < 1) and 2.32 (its
    stage at c = 1), which inflates their variance, the more the fewer the steps. ``per_step`` = 2 splits a
    step at c = 1/2: Tsit5's stages at c = 0.161, 0.327 (weights 0.01, 0.48) and those at c = 0.9, 0.98, 1
    (1.379, -3.290, 2.325: 0.414) draw separately, each group a quadrature of positive weight (Dopri5: 0.449
    and 0.460), so the draws along the path double at no cost.
    """
    return jnp.ceil(per_step * _fractional_step(t, t_start, t_end, plan) - 1e-3).astype(jnp.int32)
