"""Shared pieces of the benchmarks: a timing helper and a small Flax score network (random weights are
enough to measure cost; the samplers only see a pure score(x, t))."""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import dgjax as dg


def timed(fn, *args, repeats: int = 3):
    """(result, best wall seconds) of ``fn(*args)`` after one compile run, blocking on the result."""
    out = jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best


class _MLP(nn.Module):
    width: int = 512
    depth: int = 3

    @nn.compact
    def __call__(self, x, lam):
        freqs = jnp.exp(jnp.linspace(0.0, 4.0, 16))
        emb = jnp.concatenate([jnp.sin(lam[:, None] * freqs / 20), jnp.cos(lam[:, None] * freqs / 20)], -1)
        h = jnp.concatenate([x, emb], -1)
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(x.shape[-1])(h)


def small_flax_score(process, dim: int, seed: int = 0, width: int = 512):
    """An eps-prediction MLP on (N, dim) inputs with log-SNR conditioning, wrapped by dg.score_from."""
    net = _MLP(width=width)
    params = net.init(jax.random.key(seed), jnp.zeros((1, dim)), jnp.zeros((1,)))

    def eps_model(x, t):
        lam = jnp.broadcast_to(process.log_snr(t), (x.shape[0],))
        return net.apply(params, x, lam)

    return dg.score_from(eps_model, process, "eps")
