"""The optimiser, the training state, the compiled training step and the held-out bits/dim evaluation."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..likelihood import bits_per_dim, log_likelihood
from ..models import TrainedModel, init_params
from ..parallel import map_chunks
from .config import _RESUME_FREE, TrainConfig
from .loss import make_loss_fn, update_histogram


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate at ``step`` (0-based): linear warm-up to ``lr``, then cosine decay to
    ``lr_final_frac * lr`` at ``steps``. Plain Python (a pure function of the step), passed to the compiled
    step as an argument, so runs that differ only in steps or learning rate share one compilation."""
    warm = max(cfg.warmup, 1)
    if step < warm:
        return cfg.lr * step / warm
    frac = min((step - warm) / max(cfg.steps - warm, 1), 1.0)
    return cfg.lr * (cfg.lr_final_frac + (1 - cfg.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(cfg: TrainConfig):
    """Global-norm clipping, then Adam's scaling; the step multiplies by -learning_rate(cfg, step)."""
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.scale_by_adam())


def init_state(cfg: TrainConfig, net, shape, tx) -> dict:
    """The state at step 0. (JAX arrays are immutable, so the EMA starts as the very same arrays; Adam's
    zero moments are made in numpy from the abstract state, which compiles nothing.)"""
    params = init_params(net, shape, jax.random.fold_in(jax.random.key(cfg.seed), -1 & 0x7FFFFFFF))
    opt_state = jax.tree_util.tree_map(lambda a: jnp.asarray(np.zeros(a.shape, a.dtype)),
                                       jax.eval_shape(tx.init, params))
    return {"step": jnp.asarray(0, jnp.int32), "params": params, "ema_params": params, "opt_state": opt_state,
            "hist": jnp.asarray(np.ones((cfg.num_bins,), np.float32))}




_STEP_CACHE: dict = {}


def _settings_key(cfg: TrainConfig) -> str:
    skip = _RESUME_FREE + ("steps", "lr", "warmup", "lr_final_frac", "seed")  # not part of the compiled step
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in skip}, sort_keys=True)


def make_train_step(cfg: TrainConfig, net, tx, dim: int):
    """The jit-compiled step(state, x, key, lr) -> (state, metrics); reused within a process for runs whose
    compiled settings agree (so repeated, resumed or longer runs compile once)."""
    key = (_settings_key(cfg), dim)
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = _make_train_step(cfg, net, tx, dim)
    return _STEP_CACHE[key]


def _make_train_step(cfg: TrainConfig, net, tx, dim: int):
    loss_fn = make_loss_fn(cfg, net, dim)

    @jax.jit
    def step(state, x, key, lr):
        (loss, (lam, values)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["hist"], x, key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], jax.tree_util.tree_map(lambda u: -lr * u, updates))
        k = state["step"].astype(jnp.float32)
        decay = jnp.minimum(cfg.ema_decay, (1.0 + k) / (10.0 + k))
        ema = jax.tree_util.tree_map(lambda e, q: decay * e + (1.0 - decay) * q, state["ema_params"], params)
        hist = update_histogram(state["hist"], lam, values, cfg) if cfg.importance == "adaptive" else state["hist"]
        new = {"step": state["step"] + 1, "params": params, "ema_params": ema, "opt_state": opt_state, "hist": hist}
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return step


# ------------------------------------------------------------------------------------------------------
# held-out bits/dim
# ------------------------------------------------------------------------------------------------------
def make_evaluator(net, mcfg: dict, offset_bits: float, rtol: float):
    """A function (params, x (N, *shape), key) -> bits/dim (N,) by PF-ODE encoding with dg.log_likelihood
    (Hutchinson, one Rademacher probe, adaptive Tsit5 with rtol = atol = ``rtol``); compiled once."""
    shape = tuple(mcfg["shape"])

    @jax.jit
    def evaluate(params, x, key):
        model = TrainedModel(net, params, mcfg)
        ll = log_likelihood(model.score, model.process, x, key=key, rtol=rtol, atol=rtol)
        return bits_per_dim(ll.logp, shape, offset_bits)

    return evaluate


def heldout_bits_per_dim(evaluate, params, x, key, chunk: int = 64):
    v = map_chunks(lambda xc, k: evaluate(params, xc, k), x, chunk, key)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")

