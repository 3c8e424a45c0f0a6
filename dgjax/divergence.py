"""Divergence (trace-of-Jacobian) estimators (docs/math.md section 4).

Both estimators evaluate ``fn(x)`` once and a number of Jacobian-vector products ``J v`` of it
(through ``jax.linearize``: the primal is computed once, the tangents are vmapped; a single
probe is applied directly, see ``_UNROLL``), and return a
stack of per-probe trace estimates of shape (P, N):

- ``Exact()``: P = 1, the exact trace ``sum_i e_i^T J e_i`` from D basis JVPs (small D only:
  tests, 2-D toys, D <= ~100; memory N * D^2).
- ``Hutchinson(K)``: P = K rows ``v_k^T J v_k``, v Rademacher (default) or standard Gaussian; each
  row is an unbiased estimate of tr J, their mean is the estimate and their spread gives its standard
  error. Probes are drawn once per solve, one key per sample (``split(key, N)``; with JAX's default
  partitionable threefry, sample i's probes do not depend on the batch size), and held fixed along the path: the
  augmented ODE stays a smooth vector field that adaptive solvers can step.

``fn`` must act per sample (row i of the output depends only on row i of the input), as every score
function does; then one tangent carrying a probe in every row yields all N per-sample traces at once.
NFE: each JVP counts as one score evaluation more (``num_jvps``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._checks import batch_dot, check_param
from .errors import InvalidArgument


class DivergenceEstimator(eqx.Module):
    """Interface (abstract): ``draw`` probes once per solve, ``value_and_traces`` at each evaluation."""

    @abc.abstractmethod
    def draw(self, key, x) -> Array | None:
        """The probes of one solve ((P, N, *shape)), or None when the estimator needs none."""

    @abc.abstractmethod
    def num_jvps(self, dim: int) -> int:
        """JVPs per trace estimate in dimension ``dim`` (each counts as one score evaluation)."""

    @abc.abstractmethod
    def quadratic_traces(self, quad: Callable[[Array], Array], x: Array, probes) -> Array:
        """Estimates (P, N) of tr A from a per-sample quadratic form ``quad(z) = z^T A z`` -> (N,)."""

    def value_and_traces(self, fn: Callable[[Array], Array], x: Array, probes) -> tuple[Array, Array]:
        """(fn(x), trace estimates of J_fn(x) (P, N)): one primal evaluation and the probes' JVPs."""
        y, jvp = jax.linearize(fn, x)
        return y, self.quadratic_traces(lambda z: batch_dot(z, jvp(z)), x, probes)

    def trace(self, fn, x, probes=None):
        """The estimate of tr J_fn(x) per sample, (N,): the mean over probes."""
        return jnp.mean(self.value_and_traces(fn, x, probes)[1], axis=0)


class Exact(DivergenceEstimator):
    """Exact Jacobian trace from D basis-vector JVPs (no probes, no key needed)."""

    def draw(self, key, x):
        return None

    def num_jvps(self, dim: int) -> int:
        return dim

    def quadratic_traces(self, quad, x, probes=None):
        shape, d = x.shape[1:], x[0].size
        basis = jnp.reshape(jnp.eye(d, dtype=x.dtype), (d, 1) + shape)
        # e: (1, *shape), the same basis vector in every row -> the i-th diagonal entry of every sample
        diag = jax.lax.map(lambda e: quad(jnp.broadcast_to(e, x.shape)), basis, batch_size=min(d, 256))
        return jnp.sum(diag, axis=0)[None, :]


def _invertible_gf2(key, n: int, bits: int) -> Array:
    """(n, bits, bits) int32 invertible matrices over GF(2): L U with L unit lower and U unit upper triangular,
    their off-diagonal bits uniform."""
    kl, ku = jax.random.split(key)
    eye = jnp.eye(bits, dtype=jnp.int32)
    lower = jnp.tril(jax.random.bernoulli(kl, 0.5, (n, bits, bits)).astype(jnp.int32), -1) + eye
    upper = jnp.triu(jax.random.bernoulli(ku, 0.5, (n, bits, bits)).astype(jnp.int32), 1) + eye
    return (lower @ upper) & 1


# One probe is applied directly, more are vmapped. Tracked / untracked PF-ODE, Tsit5 x 32, N = 16, D = 3072:
# one probe vmapped 4.28x (oracle) / 2.59x (Flax MLP), applied directly 1.58x / 1.91x (a vmap over a linearized
# function batches its residuals); four probes vmapped 5.04x / 2.81x, unrolled 3.58x / 3.96x (a network's
# batched JVP wins)
_UNROLL = 1


class Hutchinson(DivergenceEstimator):
    """Hutchinson's estimator E_v[v^T J v] with ``num_probes`` probes per sample.

    Args:
      num_probes: K >= 1 probes per sample (each costs one JVP).
      distribution: "rademacher" (default; lower variance) or "gaussian".
    """

    # NumPy integers (e.g. from a config array) are integers too; bools are not
    num_probes: int = eqx.field(static=True, default=1,
                                converter=lambda v: int(v) if isinstance(v, np.integer) else v)
    distribution: str = eqx.field(static=True, default="rademacher")

    def __check_init__(self):
        k = self.num_probes
        check_param(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "num_probes",
                    f"must be an integer >= 1; got {k!r}")
        check_param(self.distribution in ("rademacher", "gaussian"), "distribution",
                    f"must be 'rademacher' or 'gaussian'; got {self.distribution!r}")

    def num_jvps(self, dim: int) -> int:
        return self.num_probes

    def draw(self, key, x):
        """Probes of shape (K, N, *shape): one key per sample, fixed for the whole solve."""
        if key is None:
            raise InvalidArgument("key: Hutchinson divergence estimation needs a PRNG key (pass "
                                  "key=jax.random.key(...)), or use divergence=dg.Exact() for small dimensions")
        keys = jax.random.split(key, x.shape[0])
        shape = (self.num_probes,) + x.shape[1:]
        if self.distribution == "rademacher":
            draw = lambda k: jax.random.rademacher(k, shape, dtype=x.dtype)  # noqa: E731
        else:
            draw = lambda k: jax.random.normal(k, shape, dtype=x.dtype)  # noqa: E731
        return jnp.moveaxis(jax.vmap(draw)(keys), 1, 0)

    def draw_step(self, key, x, step, scrambled: bool = False):
        """Probes (K, N, *shape) for draw ``step`` (int32 scalar) of a solve that redraws them per step.

        Rademacher: rows of a randomly signed Sylvester-Hadamard matrix ``h[r, c] = (-1)^popcount(r & c)``
        (D' = 2^b the power of two >= D, restricted to the first D coordinates): probe j of draw k for sample
        n is ``s_n * h[r]``, with a Rademacher sign vector ``s_n`` and an offset ``o_n`` drawn once per solve
        from ``key``, and ``r = (o_n + K k + j) mod D'`` (the rows in turn) or, ``scrambled``,
        ``r = o_n XOR G_n((K k + j) mod D')`` with an invertible b x b matrix ``G_n`` over GF(2) also drawn
        once per solve. Each probe is Rademacher-distributed (each draw's estimate is unbiased); any D'
        consecutive probes are distinct rows, and since ``sum_r h_r h_r^T = D' I`` they sum to the exact trace
        of a fixed matrix. The orders differ over fewer than D' draws: ``h_r[i] h_r[j] = h_r[i XOR j]``, so
        with the rows in turn a coordinate pair whose index difference i XOR j has no low bits (vertically
        adjacent pixels) gets nearly the same sign at consecutive draws and its errors add up; scrambled,
        every pair's signs along the draws follow a random Walsh function, so no pair is positively
        correlated on average (``StepwiseHutchinson``'s order: a few draws out of D' cancel as if drawn
        without replacement). Score-free alignment keeps the rows in turn (its 1000 steps cover many
        cycles, where that order measured better). Gaussian: independent draws (``fold_in(key, step)``).
        """
        if self.distribution != "rademacher":
            return self.draw(jax.random.fold_in(key, step), x)
        n, d = x.shape[0], x[0].size
        bits = max(d - 1, 0).bit_length()
        signs = self.draw(key, x)[:1]  # (1, N, *shape), fixed per solve
        offset = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, 1 << bits, dtype=jnp.int32)
        j = step * self.num_probes + jnp.arange(self.num_probes, dtype=jnp.int32)  # (K,)
        if scrambled:
            g = _invertible_gf2(jax.random.fold_in(key, 2), n, bits)  # (N, b, b)
            powers = jnp.arange(bits, dtype=jnp.int32)
            gj = jnp.einsum("nab,kb->kna", g, (j[:, None] >> powers) & 1) & 1  # (K, N, b): G_n j, bitwise
            rows = offset[None, :] ^ jnp.sum(gj << powers, axis=-1, dtype=jnp.int32)  # (K, N)
        else:
            rows = (offset[None, :] + j[:, None]) % (1 << bits)
        cols = jnp.arange(d, dtype=jnp.int32)
        parity = jax.lax.population_count(rows[:, :, None] & cols[None, None, :]) & 1  # (K, N, D)
        h = (1 - 2 * parity).astype(x.dtype).reshape((self.num_probes,) + x.shape)
        return signs * h

    def quadratic_traces(self, quad, x, probes):
        if probes is None:
            raise InvalidArgument("probes: Hutchinson needs probes drawn with .draw(key, x)")
        # the solver may promote the state (float32 x with float64 time under x64): follow x's dtype
        one = lambda z: quad(z.astype(x.dtype))  # noqa: E731
        if probes.shape[0] <= _UNROLL:  # a vmap over a linearized function batches its residuals: slower here
            return jnp.stack([one(probes[k]) for k in range(probes.shape[0])])
        return jax.vmap(one)(probes)


def tracking_start(divergence: DivergenceEstimator, key, x: Array, value=None, draw: bool = True):
    """The probes of a solve that tracks a divergence integral, and the tracked quantity at its start.

    Returns ``(probes, start)``: ``probes = divergence.draw(key, x)`` ((K, N, *shape); None for ``Exact`` or
    when ``draw`` is False), held fixed for the solve, and ``start`` (P, N), one row per probe (P = K, or 1
    without probes): ``value`` (scalar or (N,); default 0 in x's dtype) broadcast to (P, N)."""
    probes = divergence.draw(key, x) if draw else None
    p = 1 if probes is None else probes.shape[0]
    value = jnp.zeros((), x.dtype) if value is None else value
    return probes, jnp.broadcast_to(value, (p, x.shape[0]))


def _hutchinson_checks(num_probes, distribution) -> None:
    Hutchinson(num_probes, distribution)  # the same argument checks, one home


class StepwiseHutchinson(DivergenceEstimator):
    """Hutchinson's estimator with the probes redrawn along a constant-step solve (``steps=`` or ``grid=``).

    Args:
      num_probes: K >= 1 probes per evaluation (each costs one JVP).
      distribution: "rademacher" (default) or "gaussian".
      draws_per_step: m >= 1 draws per step: the stages of step k at c in ((j - 1) / m, j / m] share draw
        m k + j and the stage at c = 0 has draw m k (``grids.draw_index``; a time point keeps one draw, so
        Heun's two evaluations at t_k share it: the trapezoid rule with a probe per node). Default 2: Tsit5's
        stages split into two groups of positive weight (0.49 and 0.41, plus 0.10 for the first stage), so at
        no cost the probe variance per step about halves (m = 1: one draw for the step's stages after the first).
        More does not help Tsit5 (no stage lies in (1/3, 2/3], and its stages at c = 0.9, 0.98, 1 carry
        weights 1.38, -3.29, 2.32: split, their independent noise would add up instead of cancelling).

    Draw i's probes are ``Hutchinson.draw_step(key, x, i)``: for Rademacher probes rows of a randomly signed
    Sylvester-Hadamard matrix in a per-sample scrambled order, so the probes of different draws are
    orthogonal and the probe noise averages out along the path instead of staying the same at every step (a
    fixed probe's error in tr J is correlated over the whole path): for an error that changes little from
    draw to draw, the variance of log p falls about as 1 / draws. Each estimate is unbiased and the
    log-density state does not feed back into x, so the integral stays unbiased.
    Same cost per evaluation as ``Hutchinson(num_probes)``. Needs constant steps: an adaptive controller cannot
    step a field that changes at random (``dg.log_likelihood`` raises). Measured spread of log p across probe
    keys at equal NFE: ``benchmarks/bench_probe_variance.py``, docs/likelihood.md.
    """

    num_probes: int = eqx.field(static=True, default=1,
                                converter=lambda v: int(v) if isinstance(v, np.integer) else v)
    distribution: str = eqx.field(static=True, default="rademacher")
    draws_per_step: int = eqx.field(static=True, default=2,
                                    converter=lambda v: int(v) if isinstance(v, np.integer) else v)

    def __check_init__(self):
        _hutchinson_checks(self.num_probes, self.distribution)
        m = self.draws_per_step
        check_param(isinstance(m, int) and not isinstance(m, bool) and m >= 1, "draws_per_step",
                    f"must be an integer >= 1; got {m!r}")

    def _fixed(self) -> Hutchinson:
        return Hutchinson(self.num_probes, self.distribution)

    def num_jvps(self, dim: int) -> int:
        return self.num_probes

    def draw(self, key, x):
        """Step 0's probes (K, N, *shape) (what a solve that cannot redraw holds fixed)."""
        return self.draw_step(key, x, jnp.zeros((), jnp.int32))

    def draw_step(self, key, x, step):
        """Probes (K, N, *shape) of draw ``step`` (``Hutchinson.draw_step``, scrambled order)."""
        if key is None:
            self._fixed().draw(None, x)  # raises the key error naming the fix
        return self._fixed().draw_step(key, x, step, scrambled=True)

    def quadratic_traces(self, quad, x, probes):
        return self._fixed().quadratic_traces(quad, x, probes)


class OrthogonalHutchinson(DivergenceEstimator):
    """``num_probes`` K orthogonal Rademacher probes per sample, held fixed for the solve: K consecutive rows of a
    randomly signed Sylvester-Hadamard matrix from a random offset (``Hutchinson.draw_step`` at step 0). Each
    row is a Rademacher vector (unbiased); as K approaches D their mean approaches the exact trace. The rows
    are not independent, so the reported standard error across them is only indicative."""

    num_probes: int = eqx.field(static=True, default=2,
                                converter=lambda v: int(v) if isinstance(v, np.integer) else v)

    def __check_init__(self):
        _hutchinson_checks(self.num_probes, "rademacher")

    def num_jvps(self, dim: int) -> int:
        return self.num_probes

    def draw(self, key, x):
        if key is None:
            Hutchinson(self.num_probes).draw(None, x)  # raises the key error naming the fix
        return Hutchinson(self.num_probes).draw_step(key, x, jnp.zeros((), jnp.int32))

    def quadratic_traces(self, quad, x, probes):
        return Hutchinson(self.num_probes).quadratic_traces(quad, x, probes)
