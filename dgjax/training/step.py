"""The optimiser, the training state, the compiled training step and the held-out bits/dim evaluation."""

from __future__ import annotations

import functools
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


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """The learning-rate schedule (0-based step -> lr): ``optax.warmup_cosine_decay_schedule``, a linear
    warm-up from 0 to ``lr`` over ``max(warmup, 1)`` steps, then a cosine decay to ``lr_final_frac * lr`` at
    ``steps`` (the decay spans at least one step, so a run no longer than its warm-up is valid)."""
    warm = max(cfg.warmup, 1)
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warm, warm + max(cfg.steps - warm, 1),
                                              cfg.lr * cfg.lr_final_frac)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate at ``step`` (0-based): ``lr_schedule(cfg)(step)``."""
    return float(np.asarray(lr_schedule(cfg)(step)))


def _clipped_adam(learning_rate, grad_clip):
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(learning_rate))


def make_optimizer(cfg: TrainConfig):
    """Global-norm clipping, then Adam with its learning rate a hyperparameter in the optimiser state
    (``optax.inject_hyperparams``): the compiled step sets it from ``lr_schedule`` at every step, so runs that
    differ only in steps or learning rate share one compilation."""
    return optax.inject_hyperparams(_clipped_adam, static_args="grad_clip")(learning_rate=cfg.lr,
                                                                            grad_clip=cfg.grad_clip)


def init_state(cfg: TrainConfig, net, shape, tx) -> dict:
    """The state at step 0. (JAX arrays are immutable, so the EMA starts as the very same arrays; the
    optimiser state -- Adam's zero moments, the step count, the injected learning rate, set at every step --
    is made in numpy from the abstract state, which compiles nothing.)"""
    params = init_params(net, shape, jax.random.fold_in(jax.random.key(cfg.seed), -1 & 0x7FFFFFFF))
    opt_state = jax.tree_util.tree_map(lambda a: jnp.asarray(np.zeros(a.shape, a.dtype)),
                                       jax.eval_shape(tx.init, params))
    return {"step": jnp.asarray(0, jnp.int32), "params": params, "ema_params": params, "opt_state": opt_state,
            "hist": jnp.asarray(np.ones((cfg.num_bins,), np.float32))}


def _compiled_settings(cfg: TrainConfig) -> str:
    """The settings the compiled step depends on, as a hashable key (JSON)."""
    skip = _RESUME_FREE + ("steps", "lr", "warmup", "lr_final_frac", "seed")  # not part of the compiled step
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in skip}, sort_keys=True)


@functools.partial(jax.jit, static_argnames=("settings", "net", "dim"))
def _train_step(state, x, key, lr, *, settings: str, net, dim: int):
    cfg = TrainConfig.from_dict(json.loads(settings))  # the other settings keep defaults: the step uses none
    loss_fn, tx = make_loss_fn(cfg, net, dim), make_optimizer(cfg)
    (loss, (lam, values)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["hist"], x, key)
    opt_state = state["opt_state"]
    opt_state = opt_state._replace(hyperparams=dict(opt_state.hyperparams, learning_rate=lr))
    updates, opt_state = tx.update(grads, opt_state, state["params"])
    params = optax.apply_updates(state["params"], updates)
    # EMA of the parameters with the warm-up decay min(ema_decay, (1 + k) / (10 + k)) at step k
    k = state["step"].astype(jnp.float32)
    decay = jnp.minimum(cfg.ema_decay, (1.0 + k) / (10.0 + k))
    ema = optax.incremental_update(params, state["ema_params"], 1.0 - decay)
    hist = update_histogram(state["hist"], lam, values, cfg) if cfg.importance == "adaptive" else state["hist"]
    new = {"step": state["step"] + 1, "params": params, "ema_params": ema, "opt_state": opt_state, "hist": hist}
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def make_train_step(cfg: TrainConfig, net, dim: int):
    """The jit-compiled step(state, x, key, lr) -> (state, metrics), ``lr`` the step's learning rate
    (``lr_schedule``). The compiled settings are a static argument of one module-level ``jax.jit``, so runs
    whose compiled settings agree (repeated, resumed or longer runs) share jax's compilation cache."""
    return functools.partial(_train_step, settings=_compiled_settings(cfg), net=net, dim=dim)


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
        return bits_per_dim(ll.logp, math.prod(shape), offset_bits)  # D: a chunk can match shape[0]

    return evaluate


def heldout_bits_per_dim(evaluate, params, x, key, chunk: int = 64):
    v = map_chunks(lambda xc, k: evaluate(params, xc, k), x, chunk, key)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")

