"""The training loop: ``train`` (a locked run directory, signals caught, checkpoints, the final export)."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .._io import open_no_follow
from ..data import load_dataset
from ..errors import InvalidArgument
from ..models import TrainedModel, make_network, num_params, save_model
from .checkpoints import (
    Checkpoints,
    _check_resume_config,
    _read_run_config,
    _write_json,
)
from .config import TrainConfig, model_config
from .step import (
    heldout_bits_per_dim,
    init_state,
    lr_schedule,
    make_evaluator,
    make_optimizer,
    make_train_step,
)


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
        self.raise_at_once = False  # set after the last step: a signal then interrupts the final evaluation
        self.step, self.saved = 0, False
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
        if self.raise_at_once:
            raise TrainingInterrupted(signum, self.step, self.saved)

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
            raise InvalidArgument(f"output directory {self.run_dir!r} is not writable: {e}") from e
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
        raise InvalidArgument(f"the network settings {cfg.arch}: {cfg.arch_kwargs} do not build a network for data of "
                              f"shape {ds.shape} ({type(e).__name__}: {e}); fix them (e.g. --channels >= 1)") from e
    run_dir = None if run_dir is None else os.path.abspath(run_dir)
    mcfg = model_config(cfg, ds.shape, name)
    with _RunLock(run_dir), _StopOnSignal() as stop:
        ckpts = _open_run_dir(cfg, run_dir, mcfg, resume)
        state = init_state(cfg, net, ds.shape, make_optimizer(cfg))
        log = _MetricsLog(run_dir, resume and ckpts is not None and ckpts.latest_step() is not None)
        evaluate = make_evaluator(net, mcfg, ds.offset_bits, cfg.eval_rtol)
        eval_key, final_key = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), EVAL_STREAM))
        try:
            if ckpts is not None and ckpts.latest_step() is not None:
                state = ckpts.restore(state)
            state, losses = _loop(cfg, ds, net, state, ckpts, log, evaluate, eval_key, stop, progress, callback, out)
        finally:
            if ckpts is not None:
                ckpts.close()
        total_time = log.finish(int(state["step"]))
        # from here a signal interrupts the final evaluation (the last step is saved)
        stop.step, stop.saved, stop.raise_at_once = int(state["step"]), ckpts is not None, True
        bpd = bpd_se = None
        if final_eval:
            n_final = min(cfg.final_eval_num, len(ds.raw("test"))) if ds.finite else cfg.final_eval_num
            bpd, bpd_se = heldout_bits_per_dim(evaluate, state["ema_params"], ds.split("test", n_final), final_key)
            print(f"held-out bits/dim ({cfg.data} test, {n_final} examples, EMA params): {bpd:.4f} +- {bpd_se:.4f}",
                  file=sys.stderr if out is None else out)
            log.write({"step": int(state["step"]), "final_heldout_bpd": bpd, "stderr": bpd_se, "n": n_final})
            mcfg = dict(mcfg, heldout_bits_per_dim=bpd, heldout_bits_per_dim_stderr=bpd_se, heldout_n=n_final)
        mcfg = dict(mcfg, training=cfg.to_dict(), train_time_s=round(total_time, 1), steps_done=int(state["step"]),
                    num_params=num_params(state["ema_params"]), command=command)
        model = TrainedModel(net, state["ema_params"], mcfg)
        if run_dir and export:
            save_model(os.path.join(run_dir, "model"), state["ema_params"], mcfg)
    return TrainResult(state, cfg, model, losses, bpd, bpd_se, total_time, run_dir)


# the evaluation keys: a stream of the run's seed that no training step uses (step k folds in k < 2^31)
EVAL_STREAM = 2**32 - 1


def _has_checkpoint(run_dir: str) -> bool:
    ckdir = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(ckdir) and any(e.isdigit() for e in os.listdir(ckdir))


def _open_run_dir(cfg: TrainConfig, run_dir: str | None, mcfg: dict, resume: bool):
    """Check and prepare the run directory (None: no files); returns its ``Checkpoints`` (or None).

    A directory with a checkpoint is continued only with ``resume`` (and the same settings); one without
    (a run that stopped, e.g. diverged, before its first checkpoint) is started afresh either way."""
    if run_dir is None:
        return None
    cfg_path = os.path.join(run_dir, "config.json")
    has_ckpt = _has_checkpoint(run_dir)
    if resume and not os.path.exists(cfg_path):
        raise InvalidArgument(f"--resume: {run_dir!r} holds no training run to resume (no config.json)")
    if resume and has_ckpt:
        _check_resume_config(_read_run_config(run_dir), cfg, run_dir)
    elif has_ckpt:
        raise InvalidArgument(f"{run_dir!r} already holds a training run; pass --resume to continue it, or choose "
                              f"another output directory")
    try:
        os.makedirs(run_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):  # exclusive, unpredictable name, never a planted link
            pass
    except OSError as e:
        raise InvalidArgument(f"output directory {run_dir!r} is not writable: {e}") from e
    _write_json(cfg_path, {"train": cfg.to_dict(), "model": mcfg})
    return Checkpoints(run_dir, keep=cfg.keep)


class _MetricsLog:
    """RUN/metrics.jsonl (one JSON record a line, never written through a link) and the training time across
    resumed segments (RUN/time.json, rewritten at every checkpoint, so a killed run's time up to its last
    checkpoint counts when it resumes). ``run_dir`` None: records are dropped."""

    def __init__(self, run_dir: str | None, resumed: bool):
        self.path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None
        self.time_path = os.path.join(run_dir, "time.json") if run_dir else None
        self.prev = 0.0
        if self.time_path and resumed and os.path.exists(self.time_path):
            with open(self.time_path) as fh:
                self.prev = float(json.load(fh).get("train_time_s", 0.0))
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def write(self, rec: dict) -> None:
        if self.path:
            with open_no_follow(self.path) as fh:
                fh.write(json.dumps(rec) + "\n")

    def checkpointed(self, step: int) -> float:
        """Record the training time at a checkpoint; returns the total so far."""
        total = self.prev + self.elapsed()
        if self.time_path:
            _write_json(self.time_path, {"train_time_s": total, "steps": step})
        return total

    finish = checkpointed


def _loop(cfg, ds, net, state, ckpts, log, evaluate, eval_key, stop, progress, callback, out):
    """Steps ``state["step"]`` .. ``cfg.steps``: checkpoints, periodic evaluation, metrics and progress;
    a signal saves and raises ``TrainingInterrupted``. Returns (state, losses)."""
    step_fn = make_train_step(cfg, net, ds.dim)
    lrs = np.asarray(jax.vmap(lr_schedule(cfg))(jnp.arange(cfg.steps)), np.float32)  # one call, every step
    eval_x = ds.split("test", min(cfg.eval_num, len(ds.raw("test")) if ds.finite else cfg.eval_num))
    base_key = jax.random.key(cfg.seed)
    start = int(state["step"])
    losses, smooth, last_eval, bar = [], None, None, None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.data}", unit="step",
                   file=sys.stderr if out is None else out, dynamic_ncols=True, mininterval=1.0)
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
                log.checkpointed(done)
            if done % cfg.eval_every == 0 and done != cfg.steps:
                last_eval = heldout_bits_per_dim(evaluate, state["ema_params"], eval_x, eval_key)[0]
                log.write({"step": done, "heldout_bpd": last_eval, "n": len(eval_x)})
            if done % 50 == 0 or done == cfg.steps:
                log.write({"step": done, "loss": smooth, "grad_norm": float(metrics["grad_norm"]),
                           "time_s": log.elapsed()})
            if bar is not None:
                post = {"loss": f"{smooth:.4f}",
                        "img/s": f"{(done - start) * cfg.batch_size / max(log.elapsed(), 1e-9):.0f}"}
                if last_eval is not None:
                    post["bpd"] = f"{last_eval:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if callback is not None:
                callback(done, state, metrics)
            if stop.signum is not None:  # the last step's checkpoint is saved above
                if ckpts is not None and done % cfg.ckpt_every != 0 and done != cfg.steps:
                    ckpts.save(state)
                raise TrainingInterrupted(stop.signum, done, ckpts is not None)
    finally:
        if bar is not None:
            bar.close()
    return state, losses
