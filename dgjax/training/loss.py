"""The training losses: the weighted eps-prediction loss with adaptive noise-level importance sampling on the
VP log-SNR process, and the flow-matching loss on ``LinearFlow`` (formulas: ``dgjax.training``'s docstring)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..processes import LinearFlow
from .config import TrainConfig


def lambda_density(hist, cfg: TrainConfig):
    """Bin probabilities of the adaptive proposal: histogram normalised, mixed with the uniform."""
    probs = hist / jnp.sum(hist)
    return (1.0 - cfg.uniform_mix) * probs + cfg.uniform_mix / hist.shape[0]


def sample_lambda(key, hist, n: int, cfg: TrainConfig):
    """lambda (n,) and its proposal density p(lambda) (n,)."""
    lo, hi = cfg.lambda_min, cfg.lambda_max
    width = (hi - lo) / cfg.num_bins
    k1, k2 = jax.random.split(key)
    u = jax.random.uniform(k2, (n,))
    if cfg.importance == "uniform":
        return lo + (hi - lo) * u, jnp.full((n,), 1.0 / (hi - lo))
    probs = lambda_density(hist, cfg)
    b = jax.random.categorical(k1, jnp.log(probs), shape=(n,))
    return lo + (b + u) * width, probs[b] / width


def weight(lam, cfg: TrainConfig):
    if cfg.weighting == "likelihood":
        return jnp.ones_like(lam)
    return jax.nn.sigmoid(cfg.sigmoid_bias - lam)


def update_histogram(hist, lam, values, cfg: TrainConfig):
    """EMA of the batch mean of ``values`` in each bin of lambda (bins without samples are unchanged)."""
    b = jnp.clip(((lam - cfg.lambda_min) / (cfg.lambda_max - cfg.lambda_min) * cfg.num_bins).astype(jnp.int32),
                 0, cfg.num_bins - 1)
    sums = jnp.zeros_like(hist).at[b].add(values)
    counts = jnp.zeros_like(hist).at[b].add(1.0)
    means = sums / jnp.maximum(counts, 1.0)
    new = jnp.where(counts > 0, cfg.hist_decay * hist + (1 - cfg.hist_decay) * means, hist)
    return jnp.maximum(new, 1e-8)



def make_loss_fn(cfg: TrainConfig, net, dim: int):
    """loss(params, hist, x, key) -> (mean loss, (lambda, w |eps - eps_hat|^2 / D)); dropout on."""
    if cfg.objective == "flow":
        return flow_matching_loss_fn(cfg, net, dim)

    def loss_fn(params, hist, x, key):
        k_lam, k_eps, k_drop = jax.random.split(key, 3)
        lam, p = sample_lambda(k_lam, hist, x.shape[0], cfg)
        eps = jax.random.normal(k_eps, x.shape)
        bshape = (-1,) + (1,) * (x.ndim - 1)
        alpha = jnp.sqrt(jax.nn.sigmoid(lam)).reshape(bshape)
        sigma = jnp.sqrt(jax.nn.sigmoid(-lam)).reshape(bshape)
        z = alpha * x + sigma * eps
        eps_hat = net.apply({"params": params}, z, lam, train=True, rngs={"dropout": k_drop})
        sq = jnp.sum(jnp.reshape((eps - eps_hat) ** 2, (x.shape[0], -1)), axis=-1) / dim
        w = weight(lam, cfg)
        loss = jnp.mean(0.5 * w / p * sq)
        return loss, (lam, jax.lax.stop_gradient(w * sq))

    return loss_fn


def flow_matching_loss_fn(cfg: TrainConfig, net, dim: int):
    """The flow-matching (conditional velocity) loss on ``dg.LinearFlow`` (docs/math.md 2; Lipman et al. 2023,
    Liu et al. 2023): with ``t ~ U[t_min, t_max]`` (uniform time sampling, t_min = 1 - t_max = 1e-3) and
    ``x_t = (1 - t) x + t eps``, the velocity target is ``d x_t / dt = eps - x`` and

        L = 1/2 |(eps - x) - v_hat(x_t, lambda_t)|^2 / D        (per example; mean over the batch)

    The network sees the log-SNR ``lambda_t = 2 log((1 - t) / t)`` (as every dgjax network does); its output
    is the velocity, converted to the score by ``dg.score_from(..., "v")`` (s = 2 (f x - v) / g^2).
    Returns loss(params, hist, x, key) -> (mean loss, (lambda, |v - v_hat|^2 / D)); ``hist`` is unused.
    """
    process = LinearFlow()

    def loss_fn(params, hist, x, key):
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (x.shape[0],), minval=process.t_min, maxval=process.t_max)
        eps = jax.random.normal(k_eps, x.shape)
        tb = t.reshape((-1,) + (1,) * (x.ndim - 1))
        z = (1.0 - tb) * x + tb * eps
        lam = process.log_snr(t)
        v_hat = net.apply({"params": params}, z, lam, train=True, rngs={"dropout": k_drop})
        sq = jnp.sum(jnp.reshape((eps - x - v_hat) ** 2, (x.shape[0], -1)), axis=-1) / dim
        return jnp.mean(0.5 * sq), (lam, jax.lax.stop_gradient(sq))

    return loss_fn
