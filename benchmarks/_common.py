"""Shared pieces of the benchmarks: timing helpers and a small Flax score network (random weights are
enough to measure cost; the samplers only see a pure score(x, t)).

Run the benchmarks from the repository root, e.g. ``python benchmarks/run_all.py``.
"""

from __future__ import annotations

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import dgjax as dg


def timed(fn, *args, repeats: int = 3):
    """(result, best wall seconds) of ``fn(*args)`` after one compile run, blocking on the result. Best-of:
    the least disturbed by other load on a shared machine."""
    out = jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best


def interleaved_rounds(fns: dict, repeats: int = 3):
    """``fns``: name -> (callable, args tuple). Compiles each, then times them in interleaved rounds (A, B, A,
    B, ...) so that load changes affect all alike. Returns (outs, times): times[name] is the list of its wall
    seconds, one per round."""
    outs = {k: jax.block_until_ready(f(*a)) for k, (f, a) in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, (f, a) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            times[k].append(time.perf_counter() - t0)
    return outs, times


def interleaved_best(fns: dict, repeats: int = 3):
    """``interleaved_rounds``, keeping each one's best (the least disturbed) time: returns (outs, best)."""
    outs, times = interleaved_rounds(fns, repeats)
    return outs, {k: min(v) for k, v in times.items()}


def paired_ratio(times: dict, a: str, b: str) -> float:
    """Median over rounds of times[b] / times[a], each ratio taken within one round (A and B back to back):
    steadier than best(b) / best(a) on a machine whose speed drifts between rounds."""
    return float(np.median(np.asarray(times[b]) / np.asarray(times[a])))


class MLP(nn.Module):
    width: int = 256
    depth: int = 2

    @nn.compact
    def __call__(self, x, lam):
        freqs = jnp.exp(jnp.linspace(0.0, 3.0, 8))
        emb = jnp.concatenate([jnp.sin(lam[:, None] * freqs / 10), jnp.cos(lam[:, None] * freqs / 10)], -1)
        h = jnp.concatenate([x, emb], -1)
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(x.shape[-1])(h)


def small_flax_score(process, dim: int, seed: int = 0, width: int = 256):
    """An eps-predictor on (N, dim) inputs: eps_hat = sigma_t x + 0.1 MLP(x, lambda_t), wrapped by
    dg.score_from. The Gaussian baseline sigma_t x (the eps of unit-Gaussian data) keeps the score sane, so
    guidance is feasible, while the random-weight MLP carries the cost of a network."""
    net = MLP(width=width)
    params = net.init(jax.random.key(seed), jnp.zeros((1, dim)), jnp.zeros((1,)))

    def eps_model(x, t):
        lam = jnp.broadcast_to(process.log_snr(t), (x.shape[0],))
        return process.sigma(t) * x + 0.1 * net.apply(params, x, lam)

    return dg.score_from(eps_model, process, "eps")


def save_json(path: str | None, obj) -> None:
    """Write a benchmark's rows to ``path`` (the ``--json`` option) when one is given."""
    if path:
        with open(path, "w") as fh:
            json.dump(obj, fh, indent=1)
