"""Training score networks (optax): the eps-prediction denoising loss on the VP log-SNR process.

Loss. With lambda the log-SNR, ``x_lambda = alpha x + sigma eps`` (alpha^2 = sigmoid(lambda),
sigma^2 = sigmoid(-lambda)) and ``lambda ~ p(lambda)`` on [lambda_min, lambda_max], the per-example loss is

    L = 1/2 * w(lambda) / p(lambda) * |eps - eps_hat(x_lambda, lambda)|^2 / D        (nats per dimension)

an unbiased estimate of ``1/(2D) int w(lambda) E|eps - eps_hat|^2 d lambda`` (Kingma et al. 2021; Kingma &
Gao 2023). Weightings (``weighting``):

* ``"likelihood"`` (default): w = 1, unweighted in log-SNR -- the diffusion term of the ELBO (the
  continuous-time VDM loss); the published models of the density-guidance papers were trained this way.
* ``"sigmoid"`` (perceptual): w = sigmoid(sigmoid_bias - lambda), Kingma & Gao's sigmoid weighting, which
  puts weight on high noise levels (better samples, worse likelihood).

Noise-level sampling (``importance``):

* ``"adaptive"`` (default): Kingma & Gao's adaptive importance sampling, as the published code uses it:
  p(lambda) is piecewise constant on ``num_bins`` equal bins of [lambda_min, lambda_max], proportional to
  a running estimate (an EMA with decay ``hist_decay`` of the batch mean in each bin) of
  E[w(lambda) |eps - eps_hat|^2], mixed with ``uniform_mix`` of the uniform density so no bin starves.
  Dividing by p(lambda) keeps the estimate unbiased while lowering its variance.
* ``"uniform"``: p(lambda) = 1 / (lambda_max - lambda_min).

Optimisation: Adam with linear warm-up and cosine decay to ``lr_final_frac * lr`` (``learning_rate``),
global-norm gradient clipping, an EMA of the parameters (decay ``min(ema_decay, (1 + step) / (10 + step))``; the EMA parameters
are the ones exported and evaluated). One jit-compiled step does the loss, the update, the EMA and the
histogram.

Determinism and resume. The batch at step k is ``dataset.train_batch(seed, k, batch_size)`` and the
step's randomness is ``fold_in(key(seed), k)``: both are pure functions of (seed, step). A checkpoint holds
the whole state (parameters, EMA, optimiser state, histogram, step), so ``resume=True`` (``dgjax train
--resume``) continues a killed run to exactly the parameters an uninterrupted run reaches.

Checkpoints (orbax-checkpoint) go to ``RUN/checkpoints/STEP``; orbax writes each into a temporary
directory and renames it when complete, so a kill during a save never leaves a half-written checkpoint
that looks valid (leftover temporary directories are deleted when the run is resumed). The last ``keep``
are kept. At the end the EMA parameters are exported as ``RUN/model.msgpack`` + ``RUN/model.json``
(``dg.load_model(RUN)``), with the held-out bits/dim measured by ``dg.log_likelihood``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._io import atomic_write, leaf_shapes, write_bytes_synced
from .data import load_dataset
from .models import (ArchitectureMismatch, ModelError, TrainedModel, check_same_architecture, init_params,
                     make_network, num_params, param_shapes, process_to_config, register_run_loader, save_model)
from .processes import VP, LinearFlow

WEIGHTINGS = ("likelihood", "sigmoid")
IMPORTANCE = ("adaptive", "uniform")
OBJECTIVES = ("eps", "flow")
# settings that may change when a run is resumed (they do not affect the parameters)
_RESUME_FREE = ("eval_every", "eval_num", "ckpt_every", "keep", "final_eval_num", "eval_rtol")


@dataclass
class TrainConfig:
    """Every setting of a training run (saved as RUN/config.json)."""

    data: str = "digits"
    patch_size: int = 16
    objective: str = "eps"  # "eps": VP eps-prediction; "flow": flow matching on LinearFlow (flow_matching_loss_fn)
    arch: str = "unet"
    arch_kwargs: dict = field(default_factory=lambda: dict(channels=32, ch_mult=[1, 2], num_res_blocks=2,
                                                           attn_resolutions=[4], dropout=0.1))
    lambda_min: float = -10.0
    lambda_max: float = 10.0
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    lr_final_frac: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    weighting: str = "likelihood"
    sigmoid_bias: float = 2.0
    importance: str = "adaptive"
    num_bins: int = 100
    hist_decay: float = 0.99
    uniform_mix: float = 0.05
    seed: int = 0
    eval_every: int = 500
    eval_num: int = 32
    final_eval_num: int = 256
    eval_rtol: float = 1e-3
    ckpt_every: int = 500
    keep: int = 3

    def validate(self) -> "TrainConfig":
        def need(ok, name, msg):
            if not ok:
                raise ValueError(f"{name}: {msg}; got {getattr(self, name)!r}")

        need(self.weighting in WEIGHTINGS, "weighting", f"choose one of {WEIGHTINGS}")
        need(self.importance in IMPORTANCE, "importance", f"choose one of {IMPORTANCE}")
        need(self.objective in OBJECTIVES, "objective", f"choose one of {OBJECTIVES}")
        if self.objective == "flow":
            need(self.weighting == "likelihood", "weighting", "flow matching has its own (velocity) loss; "
                 "use weighting='likelihood' (the default) with objective='flow'")
            need(self.importance == "uniform", "importance", "flow matching samples t uniformly; "
                 "use importance='uniform' with objective='flow'")
        for k in ("steps", "batch_size", "num_bins", "eval_every", "eval_num", "ckpt_every", "keep", "final_eval_num"):
            need(isinstance(getattr(self, k), int) and getattr(self, k) >= 1, k, "must be an int >= 1")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 <= self.ema_decay < 1, "ema_decay", "must lie in [0, 1)")
        need(0 <= self.hist_decay < 1, "hist_decay", "must lie in [0, 1)")
        need(0 < self.uniform_mix <= 1, "uniform_mix", "must lie in (0, 1]")
        need(self.grad_clip > 0, "grad_clip", "must be > 0")
        need(self.lambda_min < self.lambda_max, "lambda_min", "must be below lambda_max")
        return self

    @property
    def data_kwargs(self) -> dict:
        return {"patch_size": self.patch_size} if self.data == "patches" else {}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"training config: unknown settings {sorted(unknown)}")
        return cls(**d)


def model_config(cfg: TrainConfig, shape, name: str = "model") -> dict:
    """The model part of a config (what ``dg.load_model`` needs): objective, process and parametrization
    (eps on VP, or the velocity "v" on LinearFlow for objective "flow")."""
    if cfg.objective == "flow":
        process, param = process_to_config(LinearFlow()), "v"
    else:
        process, param = process_to_config(VP(cfg.lambda_min, cfg.lambda_max)), "eps"
    return {"name": name, "arch": cfg.arch, "arch_kwargs": cfg.arch_kwargs, "shape": list(shape),
            "objective": cfg.objective, "process": process, "parametrization": param,
            "data": cfg.data, "data_kwargs": cfg.data_kwargs}


# ------------------------------------------------------------------------------------------------------
# noise-level sampling and weighting
# ------------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------------
# the state and the step
# ------------------------------------------------------------------------------------------------------
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
    """The flow-matching (conditional velocity) loss on ``dg.LinearFlow`` (MATH 2; Lipman et al. 2023,
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
    from .likelihood import bits_per_dim, log_likelihood

    shape = tuple(mcfg["shape"])

    @jax.jit
    def evaluate(params, x, key):
        model = TrainedModel(net, params, mcfg)
        ll = log_likelihood(model.score, model.process, x, key=key, rtol=rtol, atol=rtol)
        return bits_per_dim(ll.logp, shape, offset_bits)

    return evaluate


def heldout_bits_per_dim(evaluate, params, x, key, chunk: int = 64):
    from .parallel import map_chunks

    v = map_chunks(lambda xc, k: evaluate(params, xc, k), x, chunk, key)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


# ------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------
def _flatten_opt(opt_state) -> dict:
    leaves = jax.tree_util.tree_leaves(opt_state)
    return {f"{i:04d}": v for i, v in enumerate(leaves)}


def _to_saveable(state) -> dict:
    return {"step": state["step"], "params": state["params"], "ema_params": state["ema_params"],
            "opt_state": _flatten_opt(state["opt_state"]), "hist": state["hist"]}


def _from_saveable(saved, template) -> dict:
    """Rebuild the state from a restored tree, as plain (uncommitted) arrays of the template's dtypes: the
    compiled step then sees exactly the input types of a fresh run and is not compiled again."""
    fresh = lambda v, like: jnp.asarray(np.asarray(v, dtype=like.dtype))  # noqa: E731
    treedef = jax.tree_util.tree_structure(template["opt_state"])
    opt_leaves = [saved["opt_state"][k] for k in sorted(saved["opt_state"])]
    opt_like = jax.tree_util.tree_leaves(template["opt_state"])
    return {"step": fresh(saved["step"], template["step"]),
            "params": jax.tree_util.tree_map(fresh, saved["params"], template["params"]),
            "ema_params": jax.tree_util.tree_map(fresh, saved["ema_params"], template["ema_params"]),
            "opt_state": jax.tree_util.tree_unflatten(treedef, [fresh(v, w) for v, w in zip(opt_leaves, opt_like)]),
            "hist": fresh(saved["hist"], template["hist"])}


def state_checksum(state) -> str:
    """sha256 over the bytes of every leaf of the training state (params, EMA, optimizer, histogram, step)."""
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(_to_saveable(state)):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


class Checkpoints:
    """The orbax checkpoints of a run: ``RUN/checkpoints/STEP``, the last ``keep`` kept."""

    def __init__(self, run_dir: str, keep: int = 3, read_only: bool = False):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
        if read_only and not os.path.isdir(self.directory):
            raise ModelError(f"run directory {run_dir!r} has no checkpoints/ folder; is it a dgjax training run?")
        if not read_only and os.path.isdir(self.directory):
            # a save killed half-way leaves only orbax's temporary directory (STEP.orbax-checkpoint-tmp-*),
            # which is never taken for a checkpoint; delete such leftovers before writing new ones
            for entry in os.listdir(self.directory):
                if ".orbax-checkpoint-tmp" in entry:
                    shutil.rmtree(os.path.join(self.directory, entry), ignore_errors=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               enable_async_checkpointing=False, read_only=read_only)
        logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only managers etc.
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=ocp.StandardCheckpointHandler())

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def _checksum_path(self, step: int) -> str:
        return os.path.join(os.path.dirname(self.directory), "checksums", f"{step}.sha256")

    def save(self, state) -> None:
        step = int(state["step"])
        self.manager.save(step, args=self._ocp.args.StandardSave(_to_saveable(state)), force=True)
        self.manager.wait_until_finished()
        # a checksum beside the checkpoint: finite corruption (a flipped mantissa bit) is caught on restore
        os.makedirs(os.path.dirname(self._checksum_path(step)), exist_ok=True)
        atomic_write(self._checksum_path(step), write_bytes_synced((state_checksum(state) + "\n").encode()))

    def stored_param_shapes(self, step: int) -> dict:
        where = f"checkpoint {os.path.join(self.directory, str(step))!r}"
        try:
            meta = self.manager.item_metadata(step)
        except Exception as e:
            raise ModelError(f"{where} is corrupt or truncated (its metadata cannot be read: "
                             f"{type(e).__name__}: {e}). Delete that step's folder to resume from an earlier "
                             f"checkpoint.") from e
        tree = getattr(meta, "tree", meta)
        if not isinstance(tree, dict) or "params" not in tree:
            raise ModelError(f"{where} is corrupt or not a dgjax training checkpoint (no 'params' entry)")
        return leaf_shapes(tree["params"])

    def restore(self, template, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise ModelError(f"no checkpoint in {self.directory!r}")
        where = f"checkpoint {os.path.join(self.directory, str(step))!r}"
        check_same_architecture(
            leaf_shapes(template["params"]),
            self.stored_param_shapes(step), where)
        # the template may be abstract (jax.eval_shape in load_run): take shape and dtype without converting it
        target = jax.tree_util.tree_map(
            lambda v: jax.ShapeDtypeStruct(np.shape(v), v.dtype if hasattr(v, "dtype") else jnp.asarray(v).dtype),
            _to_saveable(template))
        try:
            saved = self.manager.restore(step, args=self._ocp.args.StandardRestore(target))
        except Exception as e:
            raise ModelError(f"{where} is corrupt or truncated (restoring it failed: {type(e).__name__}: "
                             f"{str(e)[:300]}). Delete that step's folder to resume from an earlier "
                             f"checkpoint.") from e
        state = _from_saveable(saved, template)
        bad = [k for k, v in (("params", state["params"]), ("ema_params", state["ema_params"]))
               if not all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(v))]
        if bad:
            raise ModelError(f"{where} is corrupt: {bad} hold non-finite values")
        try:
            with open(self._checksum_path(step)) as fh:
                expected = fh.read().strip()
        except FileNotFoundError:  # a checkpoint written before checksums were kept
            expected = None
        if expected is not None and expected != state_checksum(state):
            raise ModelError(f"{where} is corrupt: its contents differ from the checksum written when it was saved "
                             f"({self._checksum_path(step)!r}). Delete that step's folder to resume from an earlier "
                             f"checkpoint.")
        return state

    def close(self):
        self.manager.close()


# ------------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------------
def _write_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.write("\n")

    atomic_write(path, write)


def _read_run_config(run_dir: str) -> TrainConfig:
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as fh:
            d = json.load(fh)
    except FileNotFoundError:
        raise ModelError(f"{run_dir!r} is not a dgjax training run (no config.json)") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path!r} is corrupt or truncated: {e}") from e
    return TrainConfig.from_dict(d["train"] if "train" in d else d)


def _check_resume_config(old: TrainConfig, new: TrainConfig, run_dir: str) -> None:
    o, n = old.to_dict(), new.to_dict()
    if (o["arch"], o["arch_kwargs"], o["data"], o["patch_size"]) != (n["arch"], n["arch_kwargs"], n["data"], n["patch_size"]):
        raise ArchitectureMismatch(
            f"cannot resume {run_dir!r}: its checkpoints were written by a different architecture or data set "
            f"(stored arch={o['arch']!r} {o['arch_kwargs']} on {o['data']!r}, requested arch={n['arch']!r} "
            f"{n['arch_kwargs']} on {n['data']!r}). Use another --out directory for a new run.")
    diff = {k: (o[k], n[k]) for k in o if k not in _RESUME_FREE and o[k] != n[k]}
    if diff:
        raise ValueError(f"cannot resume {run_dir!r} with different settings (stored vs requested): {diff}; "
                         f"a resumed run must repeat the original settings to continue it exactly")


@dataclass
class TrainResult:
    state: dict
    config: TrainConfig
    model: TrainedModel
    losses: list
    heldout_bpd: float | None
    heldout_bpd_stderr: float | None
    train_time_s: float
    run_dir: str | None


def load_run(run_dir: str, step: int | None = None, ema: bool = True) -> TrainedModel:
    """The model of a training run directory at its latest (or given) checkpoint (EMA parameters)."""
    cfg = _read_run_config(run_dir)
    ds = load_dataset(cfg.data, **cfg.data_kwargs)
    net = make_network(cfg.arch, ds.shape, cfg.arch_kwargs)
    tx = make_optimizer(cfg)
    template = jax.eval_shape(lambda: init_state(cfg, net, ds.shape, tx))
    ckpts = Checkpoints(run_dir, read_only=True)
    try:
        state = ckpts.restore(template, step)
    finally:
        ckpts.close()
    mcfg = model_config(cfg, ds.shape, os.path.basename(os.path.abspath(run_dir)))
    return TrainedModel(net, state["ema_params" if ema else "params"], mcfg)


register_run_loader(load_run)  # dg.load_model(run_dir) reads training runs (models cannot import training)


class TrainingInterrupted(RuntimeError):
    """Training stopped by SIGTERM/SIGINT after saving a checkpoint (``step``); resume with ``resume=True``."""

    def __init__(self, signum: int, step: int, saved: bool):
        self.signum, self.step, self.saved = signum, step, saved
        where = "a checkpoint was saved at step" if saved else "no run directory, nothing saved; stopped at step"
        super().__init__(f"training interrupted by signal {signum}: {where} {step}"
                         + ("; continue it with --resume" if saved else ""))


class _StopOnSignal:
    """While active (main thread only), SIGTERM and SIGINT set ``signum`` instead of killing the process: the
    training loop finishes its step, saves a checkpoint and raises ``TrainingInterrupted``."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class _RunLock:
    """An exclusive ``flock`` on RUN/.lock for the whole run: a second process training into the same run
    directory (fresh or ``--resume``) is refused at once instead of colliding inside orbax."""

    def __init__(self, run_dir: str | None):
        self.run_dir, self.fh = run_dir, None

    def __enter__(self):
        if self.run_dir is None:
            return self
        import fcntl

        try:
            os.makedirs(self.run_dir, exist_ok=True)
            self.fh = open(os.path.join(self.run_dir, ".lock"), "a")
        except OSError as e:
            raise ValueError(f"output directory {self.run_dir!r} is not writable: {e}") from e
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            self.fh = None
            raise ValueError(f"{self.run_dir!r} is in use by another training process (it holds RUN/.lock); wait "
                             f"for it to finish or choose another output directory") from None
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()  # releases the flock
        return False


def train(cfg: TrainConfig, run_dir: str | None = None, *, resume: bool = False, progress: bool = True,
          callback: Callable | None = None, name: str = "model", command: str | None = None,
          export: bool = True, final_eval: bool = True, out=None) -> TrainResult:
    """Train a score network; see the module docstring.

    The settings (and the network they build) are checked before anything is written; the run directory
    is locked for the run; SIGTERM/SIGINT save a checkpoint after the current step and raise
    ``TrainingInterrupted``.

    Args:
      cfg: the settings (``TrainConfig``).
      run_dir: where checkpoints, the config, a metrics log and the exported model go (None: nowhere).
      resume: continue the run in ``run_dir`` from its latest checkpoint (settings must match).
      progress: show a tqdm progress bar with the loss and throughput.
      callback: ``callback(step, state, metrics)`` after every step (``step`` = steps done); may raise to
        stop the run (as a kill would).
      name: the model's name in the exported config; command: the command line recorded there.
    """
    cfg.validate()
    ds = load_dataset(cfg.data, **cfg.data_kwargs)
    try:  # build the network abstractly: a bad setting fails here, before anything is written
        net = make_network(cfg.arch, ds.shape, cfg.arch_kwargs)
        jax.eval_shape(lambda: init_state(cfg, net, ds.shape, make_optimizer(cfg)))
    except Exception as e:
        raise ValueError(f"the network settings {cfg.arch}: {cfg.arch_kwargs} do not build a network for data of "
                         f"shape {ds.shape} ({type(e).__name__}: {e}); fix them (e.g. --channels >= 1)") from e
    run_dir = None if run_dir is None else os.path.abspath(run_dir)
    with _RunLock(run_dir), _StopOnSignal() as stop:
        return _train(cfg, run_dir, resume=resume, progress=progress, callback=callback, name=name, command=command,
                      export=export, final_eval=final_eval, out=out, stop=stop)


def _train(cfg: TrainConfig, run_dir, *, resume, progress, callback, name, command, export, final_eval, out,
           stop) -> TrainResult:
    """The body of ``train`` (run directory locked, signals caught)."""
    out = sys.stderr if out is None else out
    ds = load_dataset(cfg.data, **cfg.data_kwargs)
    shape = ds.shape
    net = make_network(cfg.arch, shape, cfg.arch_kwargs)
    tx = make_optimizer(cfg)
    mcfg = model_config(cfg, shape, name)
    ckpts = None
    if run_dir is not None:
        run_dir = os.path.abspath(run_dir)
        cfg_path = os.path.join(run_dir, "config.json")
        if resume:
            if not os.path.exists(cfg_path):
                raise ValueError(f"--resume: {run_dir!r} holds no training run to resume (no config.json)")
            _check_resume_config(_read_run_config(run_dir), cfg, run_dir)
        elif os.path.exists(cfg_path) or os.path.isdir(os.path.join(run_dir, "checkpoints")):
            raise ValueError(f"{run_dir!r} already holds a training run; pass --resume to continue it, or choose "
                             f"another output directory")
        try:
            os.makedirs(run_dir, exist_ok=True)
            probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
            open(probe, "w").close()
            os.remove(probe)
        except OSError as e:
            raise ValueError(f"output directory {run_dir!r} is not writable: {e}") from e
        _write_json(cfg_path, {"train": cfg.to_dict(), "model": mcfg})
        ckpts = Checkpoints(run_dir, keep=cfg.keep)
    state = init_state(cfg, net, shape, tx)
    if ckpts is not None and resume and ckpts.latest_step() is not None:
        try:
            state = ckpts.restore(state)
        except Exception:
            ckpts.close()
            raise
    step_fn = make_train_step(cfg, net, tx, ds.dim)
    evaluate = make_evaluator(net, mcfg, ds.offset_bits, cfg.eval_rtol)
    eval_x = ds.split("test", min(cfg.eval_num, len(ds.raw("test")) if ds.finite else cfg.eval_num))
    eval_key = jax.random.key(12345)
    base_key = jax.random.key(cfg.seed)
    start = int(state["step"])
    losses = []
    log_path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.data}", unit="step", file=out,
                   dynamic_ncols=True, mininterval=1.0)
    # training time across resumed segments: time.json is rewritten at every checkpoint, so a killed run's
    # time up to its last checkpoint is counted when it resumes
    time_path = os.path.join(run_dir, "time.json") if run_dir else None
    prev = 0.0
    if time_path and resume and os.path.exists(time_path):
        with open(time_path) as fh:
            prev = float(json.load(fh).get("train_time_s", 0.0))
    t0 = time.perf_counter()
    smooth = None
    last_eval = None

    def log(rec):
        if log_path:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    try:
        for k in range(start, cfg.steps):
            x = jnp.asarray(ds.train_batch(cfg.seed, k, cfg.batch_size))
            state, metrics = step_fn(state, x, jax.random.fold_in(base_key, k),
                                     jnp.asarray(learning_rate(cfg, k), jnp.float32))
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged at step {k + 1}: loss {loss}; lower --lr or "
                                         f"--grad-clip")
            losses.append(loss)
            smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
            done = k + 1
            if ckpts is not None and (done % cfg.ckpt_every == 0 or done == cfg.steps):
                ckpts.save(state)
                _write_json(time_path, {"train_time_s": prev + time.perf_counter() - t0, "steps": done})
            if done % cfg.eval_every == 0 and done != cfg.steps:
                last_eval = heldout_bits_per_dim(evaluate, state["ema_params"], eval_x, eval_key)[0]
                log({"step": done, "heldout_bpd": last_eval, "n": len(eval_x)})
            if done % 50 == 0 or done == cfg.steps:
                log({"step": done, "loss": smooth, "grad_norm": float(metrics["grad_norm"]),
                     "time_s": time.perf_counter() - t0})
            if bar is not None:
                el = time.perf_counter() - t0
                post = {"loss": f"{smooth:.4f}", "img/s": f"{(done - start) * cfg.batch_size / max(el, 1e-9):.0f}"}
                if last_eval is not None:
                    post["bpd"] = f"{last_eval:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if callback is not None:
                callback(done, state, metrics)
            if stop.signum is not None and done != cfg.steps:
                if ckpts is not None and done % cfg.ckpt_every != 0:
                    ckpts.save(state)
                raise TrainingInterrupted(stop.signum, done, ckpts is not None)
    finally:
        if bar is not None:
            bar.close()
        if ckpts is not None:
            ckpts.close()
    total_time = prev + time.perf_counter() - t0
    if time_path:
        _write_json(time_path, {"train_time_s": total_time, "steps": int(state["step"])})
    bpd = bpd_se = None
    if final_eval:
        n_final = min(cfg.final_eval_num, len(ds.raw("test"))) if ds.finite else cfg.final_eval_num
        bpd, bpd_se = heldout_bits_per_dim(evaluate, state["ema_params"], ds.split("test", n_final),
                                           jax.random.key(2024))
        print(f"held-out bits/dim ({cfg.data} test, {n_final} examples, EMA params): {bpd:.4f} +- {bpd_se:.4f}",
              file=out)
        log({"step": int(state["step"]), "final_heldout_bpd": bpd, "stderr": bpd_se, "n": n_final})
        mcfg = dict(mcfg, heldout_bits_per_dim=bpd, heldout_bits_per_dim_stderr=bpd_se, heldout_n=n_final)
    mcfg = dict(mcfg, training=cfg.to_dict(), train_time_s=round(total_time, 1), steps_done=int(state["step"]),
                num_params=num_params(state["ema_params"]), command=command)
    model = TrainedModel(net, state["ema_params"], mcfg)
    if run_dir and export:
        save_model(os.path.join(run_dir, "model"), state["ema_params"], mcfg)
    return TrainResult(state, cfg, model, losses, bpd, bpd_se, total_time, run_dir)
