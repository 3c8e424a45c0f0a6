"""The training loop: ``train`` (a locked run directory, signals caught, checkpoints, the final export)."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._io import open_no_follow
from ..data import load_dataset
from ..models import TrainedModel, make_network, num_params, save_model
from .checkpoints import Checkpoints, _check_resume_config, _read_run_config, _write_json
from .config import TrainConfig, model_config
from .step import heldout_bits_per_dim, init_state, lr_schedule, make_evaluator, make_optimizer, make_train_step


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
            self.fh = open_no_follow(os.path.join(self.run_dir, ".lock"))
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
            with tempfile.TemporaryFile(dir=run_dir):  # exclusive, unpredictable name, never a planted link
                pass
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
    step_fn = make_train_step(cfg, net, ds.dim)
    lrs = np.asarray(jax.vmap(lr_schedule(cfg))(jnp.arange(cfg.steps)), np.float32)  # one call, every step
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
            with open_no_follow(log_path) as fh:
                fh.write(json.dumps(rec) + "\n")

    try:
        for k in range(start, cfg.steps):
            x = jnp.asarray(ds.train_batch(cfg.seed, k, cfg.batch_size))
            state, metrics = step_fn(state, x, jax.random.fold_in(base_key, k), lrs[k])
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
