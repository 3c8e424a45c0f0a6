"""Fine-tune the shipped ``digits-flow`` model on its exact PF-ODE log-likelihood (the continuous-normalizing-flow
objective) and report held-out bits/dim before and after.

The model (a flow-matching UNet, process ``LinearFlow``) is a pytree whose leaves are its parameters, so
``jax.grad`` of the mean log-likelihood of a training batch (uniformly dequantised digits, docs/math.md section 4:
log p by the PF-ODE encoding, Hutchinson divergence) gives the gradient with respect to every weight, through
diffrax's adjoint (``--adjoint backsolve`` for memory flat in the number of steps). optax's Adam takes ``--steps``
steps of it. By default only the conditioning weights train (``--tune conditioning``: every bias, the
normalisation scales and shifts, the time-embedding layers; 106,177 of 1,001,729), the convolution and attention
kernels stay frozen: their gradients are mostly the particular training digits' (cosine 0.36 with a held-out
batch's at 64 examples), the conditioning weights' are shared (0.81; ``benchmarks/bench_finetune_directions.py``).

A constant-step solve is an objective the network can game: its error is a function of the weights, and the
gradient lowers it too, so the coarse estimate of log p rises while the true log p falls (docs/likelihood.md,
"Training on the log-likelihood", has the measurements). Drawing the step times afresh at every Adam step does not
prevent it (``--train-solve heun --time-change random``: a random smooth time change t = change(s) of the process,
``TimeChange``, ``TimeChanged``, under which the PF-ODE and its exact log p are unchanged but the constant steps
land at fresh times). The default training solve is error-controlled instead (``--train-solve adaptive``: Tsit5
with a PID step size at ``--train-rtol``): where the weights make the solve harder it takes more steps, so the
training estimate stays within its tolerance of the exact log p whatever the weights.

Held-out bits/dim are measured before and after over the test split (all 297 digits by default) by
``dg.evaluate_likelihood``: uniform dequantization with ``--eval-repeats`` copies per digit, the published
protocol's adaptive solve (``--eval-rtol``, 1e-5) and one Hutchinson probe per copy, under one key, so that
before and after see the same copies and probes and ``dg.likelihood_difference`` pairs them: its standard error
splits into the draws' part (what is left of the dequantization and probe noise; the split's own change is known
to it) and the examples' part (what the change says about other digits). After fine-tuning the split is also
evaluated under the training solve (its fixed grid for Heun), so that a model that learnt a discretisation's
error shows as a gap between the two. Every evaluation keeps per-batch files under OUT/heldout/ and resumes. The
fine-tuned model is written to OUT/model.msgpack (+ .json), a model file like any other: ``dgjax likelihood
--model OUT/model.msgpack`` evaluates it under the published protocol.

    python scripts/finetune_flow.py             # 80 Adam steps, batch 32, adaptive rtol 1e-2: 54 minutes on 2 cores
    python scripts/finetune_flow.py --quick     # 3 steps, tiny sizes: the plumbing only
    python scripts/finetune_flow.py --resume    # continue a stopped run (saved every --ckpt-every steps and on
                                                # SIGTERM/SIGINT in OUT/state.msgpack); --steps may be raised
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

import dgjax as dg
from dgjax._io import atomic_write, write_bytes
from dgjax.models import save_model
from dgjax.models.checkpoints import _checksum
from dgjax.training.loop import _StopOnSignal

REPO = Path(__file__).resolve().parent.parent
ADJOINTS = {"recursive": dfx.RecursiveCheckpointAdjoint, "backsolve": dfx.BacksolveAdjoint}
# the settings a resumed run must share with the run it continues (--steps may grow; --eval-every may change)
RESUME_SETTINGS = ("quick", "seed", "batch_size", "lr", "train_solve", "train_rtol", "max_steps", "ode_steps",
                   "time_change", "tune", "adjoint", "eval_n", "eval_repeats", "eval_rtol", "eval_probes")


def save_state(path: Path, args, step: int, params, opt_state, history, history_eval) -> None:
    """The run after ``step`` Adam steps as one file, written atomically: weights, Adam's state and the histories
    (the held-out evaluations keep their own per-batch files, ``held_out``)."""
    leaves = {name: {str(i): np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(tree))}
              for name, tree in (("params", params), ("opt_state", opt_state))}
    meta = dict(step=step, settings={k: getattr(args, k) for k in RESUME_SETTINGS}, history=history,
                history_eval=history_eval)
    blob = serialization.msgpack_serialize(dict(leaves, meta=json.dumps(meta)))
    atomic_write(str(path), write_bytes(blob))


def load_state(path: Path, args, params, opt_state):
    """(params, opt_state, step, history, history_eval) of a state file written by ``save_state``, in
    the structure of ``params`` and ``opt_state``; exits with a message naming what differs when the file was
    written with other settings or another set of weights."""
    if not path.is_file():
        sys.exit(f"--resume: no saved run at {path}; start without --resume")
    raw = serialization.msgpack_restore(path.read_bytes())
    meta = json.loads(str(raw["meta"]))
    differ = {k: (meta["settings"].get(k), getattr(args, k)) for k in RESUME_SETTINGS
              if meta["settings"].get(k) != getattr(args, k)}
    if differ:
        sys.exit(f"--resume: {path} was written with other settings (saved, given): {differ}; pass the same "
                 f"options or another --out")
    restored = []
    for name, tree in (("params", params), ("opt_state", opt_state)):
        leaves = jax.tree_util.tree_leaves(tree)
        stored = dict(raw[name])
        saved = [stored.get(str(i)) for i in range(len(leaves))]
        if len(stored) != len(leaves) or any(v is None or np.shape(v) != np.shape(a)
                                                for v, a in zip(saved, leaves, strict=True)):
            sys.exit(f"--resume: the {name} in {path} do not match this run's (another --tune or model)")
        restored.append(jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree),
                                                     [jnp.asarray(v) for v in saved]))
    return (*restored, int(meta["step"]), meta["history"], meta["history_eval"])


class TimeChange(eqx.Module):
    """A smooth increasing map of [lo, hi] onto itself: t = lo + (hi - lo) w(u), u = (s - lo) / (hi - lo),
    w(u) = u + sum_j a_j sin(pi j u) / (pi j), so w(0) = 0, w(1) = 1 and w'(u) = 1 + sum_j a_j cos(pi j u) > 0
    while that stays positive. Constant steps in s are steps at the times t_k = w(s_k) in t."""

    a: jax.Array  # (J,) mode amplitudes
    lo: float = eqx.field(static=True)
    hi: float = eqx.field(static=True)

    @staticmethod
    def draw(key, modes: int, lo: float, hi: float, scale: float = 0.25, min_slope: float = 0.25) -> TimeChange:
        """Random amplitudes a_j ~ N(0, scale^2), shrunk where needed so that w' >= min_slope on a fine grid of u:
        each time moves by about 0.3 scale (of [lo, hi]), and no step is stretched or squeezed by more than
        1 / min_slope."""
        a = scale * jax.random.normal(key, (modes,))
        u = jnp.linspace(0.0, 1.0, 64 * modes + 1)
        low = jnp.min(jnp.cos(jnp.pi * jnp.arange(1, modes + 1) * u[:, None]) @ a)  # min_u w'(u) - 1
        return TimeChange(a * jnp.minimum(1.0, (1.0 - min_slope) / jnp.maximum(-low, 1e-12)), lo, hi)

    def __call__(self, s):
        u = (s - self.lo) / (self.hi - self.lo)
        j = jnp.arange(1, self.a.shape[0] + 1, dtype=jnp.result_type(u))
        w = u + jnp.sum(self.a * jnp.sin(jnp.pi * j * u[..., None]) / (jnp.pi * j), axis=-1)
        return self.lo + (self.hi - self.lo) * w


class TimeChanged(dg.Process):
    """The process ``base`` run on the clock s, t = change(s): alpha'(s) = alpha(t(s)), sigma'(s) = sigma(t(s)) on
    the same [t_min, t_max]. Its PF-ODE is the base's with time reparametrised (f and g^2 pick up dt/ds through the
    process's jvp), so its exact log p equals the base's; only the discretisation of a constant-step solve moves."""

    base: dg.Process
    change: TimeChange
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(self, base, change):
        self.base, self.change, self.t_min, self.t_max = base, change, base.t_min, base.t_max

    def log_alpha(self, t):
        return self.base.log_alpha(self.change(jnp.asarray(t)))

    def log_sigma(self, t):
        return self.base.log_sigma(self.change(jnp.asarray(t)))


class TimeChangedScore(eqx.Module):
    """The model's score on the clock s: score(x, s) = model.score(x, change(s))."""

    model: dg.TrainedModel
    change: TimeChange

    def __call__(self, x, t):
        return self.model.score(x, self.change(jnp.asarray(t)))


def is_conditioning(path, leaf) -> bool:
    """A bias, a normalisation scale or shift, or a weight of a time-embedding layer (flax's Dense layers here)."""
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(names) and (names[-1] in ("bias", "scale") or any(str(n).startswith("Dense") for n in names))


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 steps on tiny batches: checks the plumbing only")
    ap.add_argument("--steps", type=int, default=None, help="Adam steps in all (default 80; 3 with --quick)")
    ap.add_argument("--batch-size", type=int, default=32, help="training examples per step")
    ap.add_argument("--lr", type=float, default=2e-5, help="Adam learning rate")
    ap.add_argument("--train-solve", choices=["adaptive", "heun"], default="adaptive",
                    help="adaptive: Tsit5 with an error-controlled step size at --train-rtol (what the network cannot "
                         "game); heun: --ode-steps constant Heun steps (a demonstration of a gamed objective)")
    ap.add_argument("--train-rtol", type=float, default=1e-2, help="rtol = atol of the adaptive training solve")
    ap.add_argument("--max-steps", type=int, default=256, help="step budget of the adaptive training solve")
    ap.add_argument("--ode-steps", type=int, default=8, help="--train-solve heun: constant Heun steps")
    ap.add_argument("--time-change", choices=["random", "none"], default="random",
                    help="--train-solve heun: a fresh random smooth time change at every Adam step (steps at fresh "
                         "times), or none (the fixed uniform grid)")
    ap.add_argument("--eval-n", type=int, default=None, help="held-out examples: the first N of the test split "
                    "(default all 297)")
    ap.add_argument("--eval-repeats", type=int, default=2, help="uniform dequantization draws per held-out example")
    ap.add_argument("--eval-rtol", type=float, default=1e-5,
                    help="rtol = atol of the adaptive Tsit5 held-out solve (the published protocol's 1e-5)")
    ap.add_argument("--eval-probes", type=int, default=1, help="Hutchinson probes of each held-out encoding")
    ap.add_argument("--eval-every", type=int, default=0, help="also report held-out bits/dim every this many steps "
                    "(0: only before and after)")
    ap.add_argument("--tune", choices=["all", "conditioning"], default="conditioning",
                    help="which weights Adam trains: all, or the conditioning ones (every bias, the normalisation "
                         "scales and shifts, the time-embedding layers: a tenth of the weights, whose gradients agree "
                         "between training batches and with held-out ones), the rest frozen")
    ap.add_argument("--adjoint", choices=sorted(ADJOINTS), default="recursive")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results folder (default results/finetune_flow[-quick])")
    ap.add_argument("--ckpt-every", type=int, default=10, help="save the run (OUT/state.msgpack) every this many "
                    "steps (0: only at the end and on SIGTERM/SIGINT)")
    ap.add_argument("--resume", action="store_true", help="continue the run saved in OUT/state.msgpack (same "
                    "options; --steps may be larger): the result equals an uninterrupted run's")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_size, args.ode_steps, args.train_rtol = 2, 2, 1e-1
        args.eval_n, args.eval_repeats, args.eval_rtol, args.eval_probes = 8, 1, 1e-2, 1
    if args.steps is None:
        args.steps = 3 if args.quick else 80
    if args.ckpt_every < 0:
        ap.error(f"--ckpt-every: must be >= 0; got {args.ckpt_every}")
    for name in ("steps", "batch_size", "ode_steps", "max_steps", "eval_n", "eval_repeats", "eval_probes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: must be >= 1; got {getattr(args, name)}")
    for name in ("lr", "train_rtol", "eval_rtol"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            ap.error(f"--{name.replace('_', '-')}: must be a finite positive number; got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    command = "python scripts/finetune_flow.py " + " ".join(sys.argv[1:] if argv is None else argv)
    default_out = REPO / "results" / ("finetune_flow-quick" if args.quick else "finetune_flow")
    out_dir = Path(args.out) if args.out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = dg.load_model("digits-flow")
    ds, process = model.dataset, model.process
    key = jax.random.key(args.seed)
    k_eval, k_train = jax.random.split(key)
    y_test = ds.data_split("test", args.eval_n)  # integer levels, dequantized by the evaluation
    params, static = eqx.partition(model, eqx.is_inexact_array)
    if args.tune == "conditioning":  # train these, carry the rest with the static part
        params, frozen = eqx.partition(params, jax.tree_util.tree_map_with_path(is_conditioning, params))
        static = eqx.combine(frozen, static)
    adjoint = ADJOINTS[args.adjoint]()
    d_ln2 = model.dim * math.log(2.0)
    if args.train_solve == "adaptive":
        train_solve = dict(rtol=args.train_rtol, atol=args.train_rtol, max_steps=args.max_steps)
        solve_text = f"adaptive Tsit5, rtol {args.train_rtol:g}"
    else:
        train_solve = dict(solver=dfx.Heun(), steps=args.ode_steps, grid="t")
        solve_text = f"{args.ode_steps} Heun steps" + (", random time change" if args.time_change == "random" else "")
    eval_solve = dg.SolveOptions(rtol=args.eval_rtol, atol=args.eval_rtol)

    def loss(p, x, k):  # training bits/dim, less the constant offset: -mean log p / (D ln 2)
        m = eqx.combine(p, static)
        kc, kp = jax.random.split(k)
        if args.train_solve == "heun" and args.time_change == "random":
            change = TimeChange.draw(kc, args.ode_steps, process.t_min, process.t_max)
            out = dg.log_likelihood(TimeChangedScore(m, change), TimeChanged(process, change), x, key=kp,
                                    adjoint=adjoint, prior_log_prob=process.prior_log_prob, **train_solve)
        else:
            out = m.log_likelihood(x, key=kp, adjoint=adjoint, **train_solve)
        return -jnp.mean(out.logp) / d_ln2

    opt = optax.adam(args.lr)

    @jax.jit
    def step(p, opt_state, x, k):
        value, grads = jax.value_and_grad(loss)(p, x, k)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

    def held_out(p, options: dg.SolveOptions) -> dg.DatasetLikelihood:
        """The held-out split's log-likelihood under parameters p: uniform dequantization, ``--eval-repeats``
        copies per example, one key for every p (the same copies and probes, so that changes pair). Per-batch
        results go to OUT/heldout/<digest of the weights and the settings>: an interrupted or repeated evaluation
        resumes."""
        m = eqx.combine(p, static)
        settings = [args.seed, args.eval_n, args.eval_repeats, args.eval_probes, repr(options),
                    _checksum(eqx.filter(m, eqx.is_inexact_array))]
        digest = hashlib.sha256(json.dumps(settings).encode())
        return dg.evaluate_likelihood(
            m.score, m.process, y_test, key=k_eval, quantization=ds.quantization,
            dequantization=dg.UniformDequantization(repeats=args.eval_repeats),
            divergence=dg.Hutchinson(args.eval_probes), options=options, progress=not args.quick,
            checkpoint_dir=str(out_dir / "heldout" / digest.hexdigest()[:16]))

    def change_text(r: dg.DatasetLikelihood) -> str:
        se = r.bits_stderr
        return (f"{r.bits_per_dim:+.4f} +- {se.total:.4f} (draws' part {se.dequantization:.4f}, which examples "
                f"{se.data:.4f})")

    state_path = out_dir / "state.msgpack"
    opt_state = opt.init(params)
    before = held_out(params, eval_solve)
    print(f"held-out before: {before}", flush=True)
    if args.resume:
        params, opt_state, start, history, history_eval = load_state(state_path, args, params, opt_state)
        print(f"resumed after step {start} from {state_path}", flush=True)
    else:
        start, history, history_eval = 0, [], []
    t_train = time.perf_counter()
    with _StopOnSignal() as stop:  # SIGTERM/SIGINT (main thread): finish the step, save the run, stop
        for i in range(start, args.steps):
            x = jnp.asarray(ds.train_batch(args.seed, i, args.batch_size))
            params, opt_state, value = step(params, opt_state, x, jax.random.fold_in(k_train, i))
            history.append(float(value) + ds.offset_bits)
            if args.eval_every and (i + 1) % args.eval_every == 0 and i + 1 < args.steps:
                mid = dg.likelihood_difference(held_out(params, eval_solve), before)
                print(f"step {i + 1:4d}: held-out bits/dim {before.bits_per_dim + mid.bits_per_dim:.4f}, paired "
                      f"change {change_text(mid)}", flush=True)
                history_eval.append(dict(step=i + 1, change=mid.bits_per_dim, change_stderr=mid.bits_stderr.total))
            if (i + 1) % max(1, args.steps // 10) == 0:
                recent = np.mean(history[-max(1, args.steps // 10):])
                print(f"step {i + 1:4d}/{args.steps}: training bits/dim (batch, {solve_text}) {recent:.4f}  "
                      f"[{time.perf_counter() - t_train:.0f} s]", flush=True)
            if stop.signum is not None or (args.ckpt_every and (i + 1) % args.ckpt_every == 0 and i + 1 < args.steps):
                save_state(state_path, args, i + 1, params, opt_state, history, history_eval)
            if stop.signum is not None:
                sys.exit(f"stopped by signal {stop.signum} after step {i + 1}, saved in {state_path}; continue "
                         f"with the same command and --resume")
    save_state(state_path, args, args.steps, params, opt_state, history, history_eval)
    after = held_out(params, eval_solve)
    # the fine-tuned model, loadable as any model file (dg.load_model, dgjax likelihood --model OUT/model.msgpack)
    tuned = eqx.combine(params, static)
    keep = {k: v for k, v in tuned.config.items() if not k.startswith(("heldout_", "params_", "format"))}
    model_files = save_model(str(out_dir / "model"), tuned.params, dict(
        keep, name=f"{tuned.config.get('name', 'digits-flow')}-cnf", finetuned_from=tuned.config.get("name"),
        finetune_command=command))
    # held-out under the training solve (its fixed grid for heun): far below the adaptive value when the model has
    # learnt a discretisation's error instead of the data
    coarse = held_out(params, dg.SolveOptions(**train_solve)).bits_per_dim
    print(f"held-out bits/dim after, under the training solve ({solve_text.split(', random')[0]}): {coarse:.4f}",
          flush=True)
    # the paired change: same examples, copies and probes, so the draws' noise largely cancels
    change = dg.likelihood_difference(after, before)
    print(f"held-out after: {after}\nheld-out paired change (bits/dim): {change_text(change)}", flush=True)

    def parts(r: dg.DatasetLikelihood) -> dict:  # the error parts in bits/dim, None where not separable
        return {k: (float(v) if math.isfinite(v) else None) for k, v in dataclasses.asdict(r.bits_stderr).items()}

    summary = dict(
        command=command, quick=args.quick, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        train_solve=solve_text, tune=args.tune, adjoint=args.adjoint, eval_n=before.num_examples,
        eval_repeats=args.eval_repeats, eval_rtol=args.eval_rtol, eval_probes=args.eval_probes,
        eval_nfe_per_example=before.nfe_per_example,
        heldout_bpd_before=before.bits_per_dim, heldout_bpd_before_stderr=parts(before),
        heldout_bpd_after=after.bits_per_dim, heldout_bpd_after_stderr=parts(after),
        heldout_bpd_change=change.bits_per_dim, heldout_bpd_change_stderr=parts(change),
        heldout_bpd_after_training_solve=coarse,
        heldout_during=history_eval, train_bpd_first=history[0], train_bpd_last10=float(np.mean(history[-10:])),
        model_files=[str(f) for f in model_files], wall_s=round(time.perf_counter() - t_start, 1),
        backend=jax.default_backend(),
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"held-out bits/dim {before.bits_per_dim:.4f} -> {after.bits_per_dim:.4f} ({change_text(change)}) in "
          f"{summary['wall_s']:.0f} s; {out_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
