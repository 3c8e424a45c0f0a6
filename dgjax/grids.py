"""Step grids for constant-step solves (``steps=`` with ``grid=``).

A grid is the list of times a constant-step solve steps to, from t0 to t1 (either direction); diffrax
steps exactly to them (``diffrax.StepTo``). Named grids place ``steps + 1`` points uniformly in a warped
coordinate of the process (lambda_t = log-SNR, s_t = sigma_t / alpha_t = exp(-lambda_t / 2)):

    "t"        uniform in t                      (dgjax's historical choice)
    "log_snr"  uniform in lambda_t               (the published code's choice)
    "edm"      uniform in s_t^(1/rho), rho = 7   (Karras et al. 2022, eq. 5, written in s = sigma/alpha so it
                                                  applies to any process; for EDM itself s = sigma = t)

or an explicit array of times (strictly monotone, from t0 to t1, inside [t_min, t_max]).

Each process names its default grid in ``Process.default_grid`` (chosen by ``benchmarks/bench_grids.py``,
stated in each process's docstring); ``grid=None`` with ``steps`` uses it. Grid times are computed in
float64 (numpy, with the process evaluated under x64) by bisection on lambda_t, which every process
makes strictly decreasing in t; the endpoints are t0 and t1 exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ._checks import check_int

GRIDS = ("t", "log_snr", "edm")
EDM_RHO = 7.0


def _x64():
    return jax.enable_x64(True)


def _log_snr64(process, t: np.ndarray) -> np.ndarray:
    with _x64(), jax.ensure_compile_time_eval():  # concrete numbers, also while a caller is being traced
        return np.asarray(process.log_snr(np.asarray(t, np.float64)), np.float64)


def _invert_log_snr(process, lam: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """t with lambda_t = lam on [lo, hi] (lambda decreasing in t), by 100 steps of vectorised bisection."""
    a = np.full(lam.shape, lo, np.float64)
    b = np.full(lam.shape, hi, np.float64)
    for _ in range(100):
        m = 0.5 * (a + b)
        above = _log_snr64(process, m) > lam  # lambda(m) > target: target lies later in t
        a, b = np.where(above, m, a), np.where(above, b, m)
    return 0.5 * (a + b)


def _ascending(process, lo: float, hi: float, steps: int, grid: str) -> np.ndarray:
    """steps + 1 times from lo to hi (lo < hi), uniform in the grid's coordinate."""
    u = np.linspace(0.0, 1.0, steps + 1)
    if grid == "t":
        ts = lo + (hi - lo) * u
    else:
        lam_lo, lam_hi = _log_snr64(process, np.array([lo, hi]))
        if not lam_lo > lam_hi:
            raise ValueError(f"grid: {grid!r} needs a log-SNR strictly decreasing in t, but {type(process).__name__} "
                             f"has lambda({lo}) = {lam_lo} <= lambda({hi}) = {lam_hi}; use grid='t' or an array")
        if grid == "log_snr":
            lam = lam_lo + (lam_hi - lam_lo) * u
        else:  # edm: s = exp(-lambda / 2), uniform in s^(1/rho)
            a, b = np.exp(-lam_lo / (2 * EDM_RHO)), np.exp(-lam_hi / (2 * EDM_RHO))
            lam = -2.0 * EDM_RHO * np.log(a + (b - a) * u)
        ts = _invert_log_snr(process, lam[1:-1], lo, hi)
        ts = np.concatenate([[lo], ts, [hi]])
    ts[0], ts[-1] = lo, hi
    if not np.all(np.diff(ts) > 0):
        raise ValueError(f"grid: the {grid!r} grid with steps={steps} on [{lo}, {hi}] has repeated times "
                         f"(too many steps for float64 resolution there); use fewer steps or another grid")
    return ts


def resolve_grid(process, grid, steps) -> Any:
    """The grid to use: None (adaptive / uniform-t constant steps), a grid name, or a float64 array.

    Validates the combination of ``steps`` and ``grid`` (clear errors for an unknown name, a grid without
    steps, a non-1-D array).
    """
    if grid is None:
        if steps is None:
            return None
        grid = getattr(process, "default_grid", "t")
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid: unknown grid {grid!r}; choose one of {GRIDS} or pass an array of times")
        if steps is None:
            raise ValueError(f"grid: grid={grid!r} places constant steps, so it needs steps=... (the number of "
                             f"steps); for adaptive steps drop grid=")
        return grid
    arr = np.asarray(grid, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"grid: an explicit grid must be a 1-D array of at least 2 times; got shape {arr.shape}")
    if steps is not None and steps != arr.shape[0] - 1:
        raise ValueError(f"steps: an explicit grid of {arr.shape[0]} times makes {arr.shape[0] - 1} steps; "
                         f"got steps={steps} (drop steps= or make them agree)")
    return arr


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
        raise ValueError(f"grid: the solve has zero length (t0 = t1 = {t0})")
    lo, hi = min(t0, t1), max(t0, t1)
    if isinstance(g, str):
        ts = _ascending(process, lo, hi, check_int(steps, "steps"), g)
    else:
        ts = g
        if not np.all(np.isfinite(ts)):
            raise ValueError("grid: the explicit grid contains NaN or inf")
        out = (ts < process.t_min) | (ts > process.t_max)
        if np.any(out):
            raise ValueError(f"grid: times {ts[out][:3]} leave [{process.t_min}, {process.t_max}], the time range "
                             f"of {type(process).__name__}")
        d = np.diff(ts)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError("grid: an explicit grid must be strictly monotone (all times increasing or all "
                             "decreasing, no repeats)")
        ts = np.sort(ts)
        if not (np.isclose(ts[0], lo, rtol=1e-9, atol=1e-12) and np.isclose(ts[-1], hi, rtol=1e-9, atol=1e-12)):
            raise ValueError(f"grid: an explicit grid must run from {t0} to {t1} (the solve's ends); it spans "
                             f"[{ts[0]}, {ts[-1]}]")
        ts = ts.copy()
        ts[0], ts[-1] = lo, hi
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
    if g is None or (isinstance(g, str) and g == "t"):
        return steps, None
    if isinstance(steps, jax.core.Tracer) or isinstance(t0, jax.core.Tracer) or isinstance(t1, jax.core.Tracer):
        raise ValueError(f"grid: a {g if isinstance(g, str) else 'explicit'!r} grid needs a concrete number of steps "
                         f"and concrete solve ends (not traced under jit); pass grid='t' for traced ones")
    return None, step_times(process, t0, t1, steps, g)
