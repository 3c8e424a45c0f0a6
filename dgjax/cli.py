"""The ``dgjax`` command line. I/O and printing live here, never in the math modules.

    dgjax demo        sample a 2-D Gaussian mixture with the PF-ODE, tracking log p, and print the tracked
                      value next to the exact one from the oracle (docs/math.md section 8)
    dgjax sample      density-guided samples of a trained model over a sweep of q: one PNG grid (a row per
                      q) and a table of the mean tracked log p per q (default: the shipped digits model)
    dgjax train       train a score network on a data set that ships with the installed packages
    dgjax likelihood  held-out bits/dim of a model on a data-set split (PF-ODE encoding)
    dgjax align       score-alignment fraction of a model's latents (docs/math.md section 6)

Run ``dgjax COMMAND --help`` for every option of a command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _demo(args) -> int:
    import jax
    import jax.numpy as jnp

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import dgjax as dg

    dtype = jnp.float64 if args.x64 else jnp.float32
    from dgjax.processes import process_constructor

    process = process_constructor(args.process)()
    mixture = dg.GaussianMixture(
        jnp.array([0.2, 0.3, 0.5], dtype),
        jnp.array([[-1.5, 1.0], [1.5, 1.0], [0.0, -1.2]], dtype),
        jnp.array([[0.05, 0.2], [0.2, 0.05], [0.1, 0.1]], dtype),
    )
    score, log_prob = mixture.score(process), mixture.log_prob(process)
    x_T = process.prior_sample(jax.random.key(args.seed), (args.num_samples, 2)).astype(dtype)
    start = time.perf_counter()
    out = dg.sample(score, process, x_T, track_logp=True, divergence=dg.Exact(), rtol=args.rtol, atol=args.rtol,
                    logp_T=log_prob(x_T, process.t_max))
    exact = log_prob(out.x, process.t_min)
    jax.block_until_ready(exact)
    assert out.logp is not None  # track_logp=True
    elapsed = time.perf_counter() - start
    print(f"PF-ODE on a 3-component 2-D mixture, {type(process).__name__} process, Tsit5 rtol=atol={args.rtol:g}")
    print(f"{'sample':>6} {'x':>22} {'tracked log p':>14} {'exact log p':>12} {'|error|':>10}")
    for i in range(args.num_samples):
        xi = ", ".join(f"{v:+.4f}" for v in out.x[i].tolist())
        err = abs(float(out.logp[i]) - float(exact[i]))
        print(f"{i:>6} {'(' + xi + ')':>22} {float(out.logp[i]):>14.6f} {float(exact[i]):>12.6f} {err:>10.2e}")
    max_err = float(jnp.max(jnp.abs(out.logp - exact)))
    print(f"max |tracked - exact| = {max_err:.2e} nats; NFE per sample = {int(out.nfe)}; "
          f"{elapsed:.2f}s (incl. compile)")
    return 0


def _number(kind, lo=None, lo_open=False, hi=None, hi_open=False, what=None):
    """An argparse type: ``kind`` (int or float), finite, within the bounds; argparse reports the value and
    exits with code 2 (issue 15: every invalid option is refused, never tabulated)."""
    import math

    bounds = (("(" if lo_open else "[") + f"{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}"
              + (")" if hi_open or hi is None else "]"))
    what = what or f"must be {'an integer' if kind is int else 'a finite number'} in {bounds}"

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}; got {text!r}") from None
        if (kind is float and not math.isfinite(v)) or (lo is not None and (v < lo or (lo_open and v == lo))) \
                or (hi is not None and (v > hi or (hi_open and v == hi))):
            raise argparse.ArgumentTypeError(f"{what}; got {text!r}")
        return v

    return parse


POS_INT = _number(int, 1)
# jax.random.key takes any int64, but the data order (dgjax.data) uses the seed's low 32 bits: one range for all
SEED = _number(int, 0, hi=2**32 - 1)
# diffrax counts steps in int32; 10 million network evaluations per sample is far beyond any useful run
MAX_STEPS_LIMIT = 10**7
MAX_STEPS = _number(int, 1, hi=MAX_STEPS_LIMIT)
NONNEG_INT = _number(int, 0)
POS_FLOAT = _number(float, 0, lo_open=True)
NONNEG_FLOAT = _number(float, 0)
QUANTILE = _number(float, 0, True, 1, True, what="every q must lie in (0, 1) (the log-density quantile)")
FRACTION = _number(float, 0, False, 1, True)


def _fail(msg: str) -> int:
    print(f"dgjax: error: {msg}", file=sys.stderr)
    return 2


def _train(args) -> int:
    from .models import ModelError, save_model
    from .training import TrainConfig, TrainingInterrupted, train

    if args.arch == "unet":
        arch_kwargs = dict(channels=args.channels, ch_mult=list(args.ch_mult), num_res_blocks=args.num_res_blocks,
                           attn_resolutions=list(args.attn_res), dropout=args.dropout)
    else:
        arch_kwargs = dict(width=args.width, depth=args.depth)
    # flow matching samples t uniformly and has its own loss: --importance defaults to uniform there
    importance = args.importance or ("uniform" if args.objective == "flow" else "adaptive")
    cfg = TrainConfig(data=args.data, patch_size=args.patch_size, arch=args.arch, arch_kwargs=arch_kwargs,
                      objective=args.objective,
                      steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                      grad_clip=args.grad_clip, ema_decay=args.ema_decay, weighting=args.weighting,
                      importance=importance, seed=args.seed, eval_every=args.eval_every,
                      eval_num=args.eval_num, final_eval_num=args.final_eval_num, ckpt_every=args.ckpt_every,
                      keep=args.keep)
    if args.export:  # checked before training, not after hours of it
        export_dir = os.path.dirname(os.path.abspath(args.export))
        if not os.path.isdir(export_dir) or not os.access(export_dir, os.W_OK):
            return _fail(f"--export {args.export!r}: directory {export_dir!r} does not exist or is not writable")
    command = "dgjax " + " ".join(args.argv)
    try:
        result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress,
                       name=args.name or args.data, command=command)
        if args.export:
            save_model(args.export, result.state["ema_params"], result.model.config)
    except TrainingInterrupted as e:
        print(f"dgjax: {e}", file=sys.stderr)
        return 128 + e.signum
    except (ValueError, ModelError, OSError, FloatingPointError) as e:
        return _fail(str(e))
    print(f"trained {cfg.steps} steps in {result.train_time_s:.0f}s; model in {args.out}"
          + (f" and {args.export}.msgpack/.json" if args.export else ""))
    return 0


def _load(name):
    from .models import load_model

    return load_model(name)


def _progress(total, desc, disable=False):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row" if "sampl" in desc else "batch", file=sys.stderr,
                disable=disable, dynamic_ncols=True)


def _sample(args) -> int:
    """dgjax sample: checks, one guided solve per q (``_sample_rows``), the PNG grid and the table."""
    import jax

    from .data import auto_scale, save_labelled_grid

    error = _sample_check_args(args)
    if error:
        return _fail(error)
    model = _load(args.model)
    if len(model.shape) != 3:
        return _fail(f"dgjax sample writes image grids; model {args.model!r} has non-image shape {model.shape}")
    scale = args.scale or auto_scale(model.shape[0])
    _sample_check_memory(model, args.num, len(args.q), scale, args.probes)  # before anything is computed
    x_T = model.prior_sample(jax.random.key(args.seed), args.num)  # the same latents in every row
    start = time.perf_counter()
    rows, table = _sample_rows(args, model, x_T)
    elapsed = time.perf_counter() - start
    if rows:  # only the rows that were sampled: a failed row is reported below, never drawn as a grey row
        import numpy as np

        labels = [f"q={q:g}  mean log p {logp.mean():.1f}" for q, logp, _, err in table if err is None]
        save_labelled_grid(args.out, np.stack(rows), model.dataset.transform, labels, scale=scale,
                           title=f"{getattr(model, 'name', args.model)}: density guidance, one latent per column")
    _sample_report(args, model, table, elapsed)
    return 0 if all(err is None for *_, err in table) else 1


def _sample_check_args(args) -> str | None:
    """The first problem with ``dgjax sample``'s options that needs no model, or None."""
    if not args.out.lower().endswith(".png"):
        return f"--out {args.out!r}: dgjax sample writes a PNG image; give a file name ending in .png"
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        return f"--out {args.out!r}: directory {out_dir!r} does not exist or is not writable"
    return None


def _sample_check_memory(model, num: int, rows: int, scale: int, probes: int) -> None:
    """Refuse (``InvalidArgument``) a ``--num``/``--scale`` whose lower-bound memory need exceeds the device's.

    Sampling: per latent, the Tsit5 state and its 7 stages, the probes and the rows kept (4 bytes per
    value), plus the network's widest activation twice (a layer's input and output: H W channels for a
    UNet, the hidden width for an MLP). The grid: its RGB pixels twice (the upscaled grid and the page)."""
    from ._memory import check_fits_in_memory

    h, w, _ = model.shape
    kw = model.config.get("arch_kwargs", {}) if hasattr(model, "config") else {}
    arch = model.config.get("arch") if hasattr(model, "config") else None
    widest = h * w * kw.get("channels", 32) if arch == "unet" else kw.get("width", 0) if arch == "mlp" else 0
    per_latent = 4 * (model.dim * (9 + probes + rows) + 2 * widest)
    check_fits_in_memory(num * per_latent, f"--num {num}: sampling {num} latents",
                         "lower --num (each row samples all --num latents at once)")
    pixels = (rows * (h + 1) + 1) * scale * (num * (w + 1) + 1) * scale
    check_fits_in_memory(2 * 3 * pixels, f"--scale {scale} with --num {num}: the PNG grid of {pixels:,} pixels",
                         "lower --scale or --num")


def _sample_rows(args, model, x_T) -> tuple[list, list]:
    """One density-guided solve per q from the latents ``x_T``: (rows, table); rows holds the samples of
    each q that succeeded, table one (q, log p, NFE, error message or None) per q."""
    import logging

    import jax
    import jax.numpy as jnp
    import numpy as np

    import dgjax as dg

    from .errors import InfeasibleGuidance, LeftDataRange, MaxStepsReached, typed_errors
    from .sampling.guidance import log_density_shift

    process, dim, data_range = model.process, model.dim, model.data_range  # rows leaving the data: reported
    kwargs = dict(steps=args.steps) if args.steps else dict(rtol=args.rtol, atol=args.rtol, max_steps=args.max_steps)
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)  # errors are summarised in the table

    @jax.jit
    def run(x_T, q, key):
        sampler = dg.DensityGuidance(q=q, feasibility_tol=args.feasibility_tol, data_range=data_range)
        out = dg.sample(model.score, process, x_T, sampler=sampler, key=key, track_logp=True,
                        divergence=dg.Hutchinson(args.probes), **kwargs)
        return out.x, out.logp, out.nfe

    shift = lambda q: float(log_density_shift(process, q, dim))  # noqa: E731
    rows, table = [], []
    bar = _progress(len(args.q), "sampling (first row compiles)", disable=args.no_progress)
    for i, q in enumerate(args.q):
        try:
            with typed_errors():  # under jax.jit the run-time checks arrive wrapped by XLA
                x, logp, nfe = run(x_T, jnp.full((args.num,), q, jnp.float32), jax.random.key(args.seed + 1 + i))
                x, logp = np.asarray(x), np.asarray(logp)
            if not np.all(np.isfinite(logp)):
                raise FloatingPointError("non-finite tracked log p")
            rows.append(x)
            table.append((q, logp, int(nfe), None))
        except InfeasibleGuidance:
            msg = (f"infeasible: the prescribed rise {shift(q):+.0f} nats exceeds the log-density head-room "
                   f"(of the order of D/2 = {dim / 2:.0f} nats, docs/math.md 5); move q toward 0.5")
            table.append((q, None, None, msg))
        except LeftDataRange:
            msg = (f"leaves the data range: the guidance pushes samples beyond [-{data_range:g}, {data_range:g}] "
                   f"(more than 1% of the row's pixels beyond +-{1.05 * data_range:g}); move q toward 0.5")
            table.append((q, None, None, msg))
        except MaxStepsReached:
            table.append((q, None, None, f"the adaptive solve did not finish in --max-steps {args.max_steps} steps"))
        except Exception as e:  # noqa: BLE001 -- any other failure of the row: its own first line
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            table.append((q, None, None, msg))
        bar.update(1)
    bar.close()
    return rows, table


def _sample_report(args, model, table, elapsed: float) -> None:
    """Print ``dgjax sample``'s table: one line per q (mean log p, bits/dim, DG rate shift, NFE, or the error)."""
    import numpy as np

    import dgjax as dg

    from .sampling.guidance import log_density_shift

    ds, dim = model.dataset, model.dim
    mode = f"{args.steps} Tsit5 steps" if args.steps else f"adaptive Tsit5, rtol=atol={args.rtol:g}"
    print(f"density guidance (DG-ODE) on model {model.name!r} ({model.config.get('data')}, shape {model.shape}, "
          f"D={dim}), {args.num} samples per q from the same {args.num} latents (seed {args.seed}), {mode}, "
          f"log p tracked with Hutchinson ({args.probes} probe{'s' if args.probes > 1 else ''})")
    print(f"{'q':>6} {'mean log p':>11} {'std':>8} {'mean -log p':>12} {'bits/dim':>9} {'DG rate shift':>14} "
          f"{'NFE':>6}")
    for q, logp, nfe, err in table:
        if err is not None:
            print(f"{q:>6.3g}  {err}")
            continue
        bpd = float(np.mean(dg.bits_per_dim(logp, model.shape, ds.offset_bits)))
        shift = float(log_density_shift(model.process, q, dim))
        print(f"{q:>6.3g} {logp.mean():>11.2f} {logp.std():>8.2f} {-logp.mean():>12.2f} {bpd:>9.3f} "
              f"{shift:>+14.2f} {nfe:>6d}")
    done = [q for q, _, _, err in table if err is None]
    if done:
        print(f"grid: {args.out} ({len(done)} rows, one per sampled q top to bottom: "
              f"{', '.join(f'{q:g}' for q in done)}; {args.num} columns, one per latent); "
              f"{elapsed:.1f}s (incl. compile)")
    else:
        print(f"no q could be sampled; {args.out} was not written")
    if hasattr(model, "data_log_prob"):
        print("galaxy model: log p is in nats of the network-space density of y = log(x + 1) / 0.1 (x the flux) at "
              "t_min; bits/dim without an offset; the grid shows asinh(x / 0.05) (see --help)")
    else:
        print("log p is in nats of the model density of x in [-1, 1]^D at t_min; bits/dim uses the data set's "
              f"dequantisation offset ({ds.offset_bits:.3f} bits); 'DG rate shift' is what the guidance adds to the "
              "PF-ODE's log-density rate (-div u) over the path, 1/2 (lambda_max - lambda_min) sqrt(2D) Phi^-1(q); "
              "the final log p also differs because -div u is integrated along a different path")


def _likelihood(args) -> int:
    import jax
    import numpy as np

    from .data import load_dataset
    from .parallel import map_chunks

    try:
        model = _load(args.model)
        if hasattr(model, "data_log_prob"):  # a galaxy model ships no data: encode its own samples
            return _likelihood_galaxy(args, model)
        name = args.data or model.config["data"]
        ds = load_dataset(name, **(model.config.get("data_kwargs", {}) if name == model.config["data"] else {}))
        if tuple(ds.shape) != tuple(model.shape):
            return _fail(f"data set {ds.name!r} has shape {ds.shape} but model {args.model!r} expects {model.shape}")
        if ds.finite:
            total = len(ds.raw(args.split))
            n = total if args.num is None else min(args.num, total)
        else:
            n = args.num or 256
        if args.method == "ode":
            return _likelihood_ode(args, model, ds, ds.data_split(args.split, n, seed=args.seed))
        x = ds.split(args.split, n, seed=args.seed)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    evaluate = _stochastic_evaluator(model, ds.offset_bits, args.method, args.steps, args.num_samples)
    how = (f"forward-SDE encoder, one Hutchinson probe, {args.steps} Euler-Maruyama steps" if args.method == "sde"
           else f"ELBO (an upper bound in bits/dim), {args.num_samples} stratified antithetic log-SNR draws")
    start = time.perf_counter()
    bar = _progress(int(np.ceil(len(x) / args.batch_size)), "encoding (first batch compiles)", args.no_progress)
    v = map_chunks(lambda xc, k: evaluate(model.params, xc, k), x, args.batch_size,
                               jax.random.key(args.seed), on_chunk=lambda: bar.update(1))
    bar.close()
    if not np.all(np.isfinite(v)):
        return _fail(f"{int((~np.isfinite(v)).sum())} of {len(v)} bits/dim values are not finite (NaN or inf): the "
                     f"model's score is not finite on this data (check the model file)")
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    print(f"model {model.name!r} on {ds.name} {args.split} ({len(v)} examples, uniform dequantisation, "
          f"{how}): {v.mean():.4f} +- {se:.4f} bits/dim "
          f"({time.perf_counter() - start:.1f}s)")
    return 0


def _dequantization(args, quantization):
    """The protocol object of --dequantization (None for continuous data)."""
    import dgjax as dg

    from .errors import InvalidArgument

    if quantization is None:
        if args.dequantization not in (None, "none"):
            raise InvalidArgument(f"--dequantization {args.dequantization}: the data are continuous (no quantization); "
                                  f"use none")
        return None
    choice = args.dequantization or "uniform"
    if choice == "none":
        raise InvalidArgument("--dequantization none: the data are quantized; use uniform or importance")
    if choice == "uniform":
        return dg.UniformDequantization(repeats=args.repeats)
    return dg.ImportanceDequantization(draws=args.draws, proposal=args.proposal)


def _likelihood_ode(args, model, ds, data) -> int:
    """dg.evaluate_likelihood over the split (PF-ODE encoding, docs/math.md 4) and its report."""
    import jax

    import dgjax as dg

    deq = _dequantization(args, ds.quantization)
    result = dg.evaluate_likelihood(
        model.score, model.process, data, key=jax.random.key(args.seed), dequantization=deq,
        quantization=ds.quantization, batch_size=args.batch_size, divergence=dg.Hutchinson(args.probes),
        options=dg.SolveOptions(rtol=args.rtol, atol=args.rtol, max_steps=args.max_steps),
        checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress)
    se = result.bits_stderr
    print(f"model {model.name!r} on {ds.name} {args.split} ({result.num_examples} examples; "
          f"{_protocol_text(deq)}; {args.probes} Hutchinson probe(s) per encoding, adaptive Tsit5 "
          f"rtol=atol={args.rtol:g}): {result.bits_per_dim:.4f} +- {se.total:.4f} bits/dim")
    print(f"  standard error parts (bits/dim): data {se.data:.4f}, dequantization {se.dequantization:.4f}, probe "
          f"{se.probe:.4f}; {result.nats:.3f} +- {result.stderr.total:.3f} nats per example; "
          f"{result.nfe_per_example:.0f} NFE per example; {result.wall_time:.1f}s")
    return 0


def _protocol_text(deq) -> str:
    from .evaluation import UniformDequantization

    if deq is None:
        return "continuous data, no dequantization"
    if isinstance(deq, UniformDequantization):
        return f"uniform dequantization, {deq.repeats} repeats"
    return f"importance-weighted dequantization, {deq.draws} {deq.proposal} draws"


def _stochastic_evaluator(model, offset_bits, method, steps, num_samples):
    """(params, x, key) -> bits/dim (N,) by the forward-SDE encoder (docs/math.md 4(e)) or the ELBO
    (docs/math.md 10)."""
    import jax

    import dgjax as dg

    @jax.jit
    def evaluate(params, x, key):
        m = dg.TrainedModel(model.network, params, model.config)
        if method == "sde":
            logp = dg.log_likelihood(m.score, m.process, x, key=key, encoder="sde", steps=steps).logp
        else:
            logp = dg.elbo(m.score, m.process, x, key=key, num_samples=num_samples).elbo
        return dg.bits_per_dim(logp, model.shape, offset_bits)

    return evaluate


def _likelihood_galaxy(args, model) -> int:
    import jax

    import dgjax as dg

    n = args.num or 16
    k1, k2 = jax.random.split(jax.random.key(args.seed))
    x = jax.jit(lambda k: dg.sample(model.score, model.process, model.prior_sample(k, n), rtol=args.rtol,
                                    atol=args.rtol, max_steps=args.max_steps).x)(k1)
    try:
        _dequantization(args, None)
    except ValueError as e:
        return _fail(str(e))
    result = dg.evaluate_likelihood(model.score, model.process, x, key=k2, dequantization=None,
                                    batch_size=args.batch_size, divergence=dg.Hutchinson(args.probes),
                                    options=dg.SolveOptions(rtol=args.rtol, atol=args.rtol,
                                                            max_steps=args.max_steps),
                                    checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress,
                                    to_data_space=model.data_log_prob)
    flux = result.data_space
    assert flux is not None  # to_data_space was given
    print(f"model {model.name!r}: no data set ships with it; log p of {n} of its own PF-ODE samples, re-encoded "
          f"({args.probes} Hutchinson probe(s), adaptive Tsit5 rtol=atol={args.rtol:g}): network space "
          f"y = log(x+1)/0.1 {result.nats:.1f} +- {result.stderr.total:.1f} nats ({result.bits_per_dim:.4f} bits/dim); "
          f"flux x {flux.nats:.1f} +- {flux.stderr.total:.1f} nats (+ sum log|dy/dx|) ({result.wall_time:.1f}s)")
    return 0


def _align(args) -> int:
    import jax
    import numpy as np

    import dgjax as dg

    from .parallel import map_chunks

    try:
        model = _load(args.model)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    process = model.process
    if not process.t_min < args.t_end < process.t_max:
        return _fail(f"--t-end must lie strictly inside ({process.t_min}, {process.t_max}); got {args.t_end}")
    kwargs = dict(steps=args.steps) if args.steps else dict(rtol=args.rtol, atol=args.rtol, max_steps=args.max_steps)

    @jax.jit
    def run(x_T, key):
        return dg.score_alignment(model.score, process, x_T, args.t_end, key=key, score_free=args.score_free,
                                  w_T="prior" if args.prior_direction else None, **kwargs)

    x_T = model.prior_sample(jax.random.key(args.seed), args.num)
    start = time.perf_counter()
    bar = _progress(int(np.ceil(args.num / args.batch_size)), "aligning (first batch compiles)", args.no_progress)
    v = map_chunks(run, x_T, args.batch_size, jax.random.key(args.seed), on_chunk=lambda: bar.update(1))
    bar.close()
    if not np.all(np.isfinite(v)):
        return _fail(f"{int((~np.isfinite(v)).sum())} of {len(v)} alignment values are not finite (NaN or inf): the "
                     f"model's score is not finite along the path (check the model file)")
    frac = float(np.mean(v > 0))
    print(f"score alignment of model {model.name!r} at t_end={args.t_end:g} "
          f"({'score-free' if args.score_free else 'score'} form, "
          f"w_T = {'prior score' if args.prior_direction else 's_T(x_T)'}): "
          f"aligned fraction {frac:.3f} of {len(v)} latents (value > 0); median value {np.median(v):.4g} "
          f"({time.perf_counter() - start:.1f}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgjax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for add in (_add_demo, _add_train, _add_sample, _add_likelihood, _add_align):
        add(sub)
    return parser


def _add_demo(sub) -> None:
    """``dgjax demo``: its options."""
    demo = sub.add_parser("demo", help="PF-ODE sampling of a 2-D Gaussian mixture: tracked vs exact log p")
    demo.add_argument("--num-samples", type=POS_INT, default=8, help="number of samples (default 8)")
    demo.add_argument("--process", default="vp", choices=["vp", "vplinear", "cosine", "ve", "edm", "flow"],
                      help="forward process (default vp: log-SNR linear in [-10, 10])")
    demo.add_argument("--rtol", type=POS_FLOAT, default=1e-6,
                      help="rtol = atol of the adaptive Tsit5 solve (default 1e-6)")
    demo.add_argument("--seed", type=SEED, default=0, help="PRNG seed (default 0)")
    demo.add_argument("--x64", action="store_true", help="run in float64")
    demo.set_defaults(func=_demo)


def _add_train(sub) -> None:
    """``dgjax train``: its options."""
    from .data import DATASETS

    tr = sub.add_parser("train", help="train a score network (eps-prediction on VP; --objective flow: flow matching)",
                        description="Train a score network with the denoising loss (eps-prediction) on the VP "
                        "process with log-SNR in [-10, 10], or by flow matching (velocity) on LinearFlow with "
                        "--objective flow; the data never leave the installed packages. Writes "
                        "OUT/config.json, orbax checkpoints in OUT/checkpoints, OUT/metrics.jsonl and, at the end, "
                        "the EMA model OUT/model.msgpack + OUT/model.json with its held-out bits/dim.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--data", default="digits", choices=DATASETS, help="training data set")
    tr.add_argument("--patch-size", type=POS_INT, default=16, help="patch size for --data patches")
    tr.add_argument("--objective", default="eps", choices=["eps", "flow"],
                    help="eps: eps-prediction denoising loss on VP (default); flow: flow matching on dg.LinearFlow "
                         "(x_t = (1-t) x + t eps, velocity target eps - x, t ~ U[1e-3, 1-1e-3]; model predicts v)")
    tr.add_argument("--arch", default="unet", choices=["unet", "mlp"], help="network (mlp for the 2-D toys)")
    tr.add_argument("--channels", type=POS_INT, default=32, help="unet: base channel count")
    tr.add_argument("--ch-mult", type=POS_INT, nargs="+", default=[1, 2],
                    help="unet: channel multiplier per resolution level (the resolution halves between levels)")
    tr.add_argument("--num-res-blocks", type=POS_INT, default=2, help="unet: residual blocks per level")
    tr.add_argument("--attn-res", type=POS_INT, nargs="*", default=[4], help="unet: resolutions with self-attention")
    tr.add_argument("--dropout", type=FRACTION, default=0.1, help="unet: dropout rate in the residual blocks")
    tr.add_argument("--width", type=POS_INT, default=256, help="mlp: hidden width")
    tr.add_argument("--depth", type=POS_INT, default=3, help="mlp: hidden layers")
    tr.add_argument("--steps", type=POS_INT, default=2000, help="optimisation steps")
    tr.add_argument("--batch-size", type=POS_INT, default=64, help="examples per step")
    tr.add_argument("--lr", type=POS_FLOAT, default=1e-3,
                    help="peak Adam learning rate (warm-up, then cosine decay to 10%%)")
    tr.add_argument("--warmup", type=NONNEG_INT, default=100, help="linear learning-rate warm-up steps")
    tr.add_argument("--grad-clip", type=POS_FLOAT, default=1.0, help="global gradient-norm clip")
    tr.add_argument("--ema-decay", type=FRACTION, default=0.999, help="decay of the parameter EMA")
    tr.add_argument("--weighting", default="likelihood", choices=["likelihood", "sigmoid"],
                    help="loss weighting in log-SNR: likelihood (unweighted, the ELBO) or sigmoid (perceptual)")
    tr.add_argument("--importance", default=None, choices=["adaptive", "uniform"],
                    help="noise-level sampling: adaptive importance sampling (Kingma & Gao 2023; default for "
                         "--objective eps) or uniform in log-SNR (uniform in t for --objective flow, its only choice)")
    tr.add_argument("--seed", type=SEED, default=0,
                    help="seed: the data order and all randomness are functions of (seed, step)")
    tr.add_argument("--eval-every", type=POS_INT, default=500, help="steps between held-out bits/dim evaluations")
    tr.add_argument("--eval-num", type=POS_INT, default=32, help="test examples in each periodic evaluation")
    tr.add_argument("--final-eval-num", type=POS_INT, default=256, help="test examples in the final evaluation")
    tr.add_argument("--ckpt-every", type=POS_INT, default=500, help="steps between checkpoints")
    tr.add_argument("--keep", type=POS_INT, default=3, help="checkpoints kept (the latest ones)")
    tr.add_argument("--out", default="runs/train", help="run directory")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its latest checkpoint (same settings; the result equals "
                    "an uninterrupted run's)")
    tr.add_argument("--name", default=None, help="model name recorded in its config (default: the data set)")
    tr.add_argument("--export", default=None, metavar="PREFIX",
                    help="also write the final model to PREFIX.msgpack + PREFIX.json (e.g. dgjax/weights/digits)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=_train)


def _add_sample(sub) -> None:
    """``dgjax sample``: its options."""
    sm = sub.add_parser("sample", help="density-guided samples over a sweep of q: a PNG grid and a log p table",
                        description="Sample a trained model with density guidance (DG-ODE, docs/math.md section 5) for "
                        "each q, from the same latents (rescaled to the median radius), tracking log p. Writes one "
                        "PNG grid with a row per q and prints the mean tracked log p per q. q is the log-density "
                        "quantile: q > 0.5 raises log p (smoother, less detail), q < 0.5 lowers it (more detail).",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sm.add_argument("--model", default="digits",
                    help="a shipped model (digits, digits-flow, patches), a galaxy model (galaxies-hsc32, "
                    "galaxies-hsc64, galaxies-ztf32, galaxies-ztf64; needs dgjax[galaxies]; images shown with an "
                    "asinh stretch of the flux x = exp(0.1 y) - 1: asinh(x / 0.05) / asinh(20), black at flux 0, "
                    "white at flux 1), "
                    "a NAME.msgpack file, or a training run directory")
    sm.add_argument("--q", type=QUANTILE, nargs="+", default=[0.5, 0.55, 0.6, 0.65],
                    help="log-density quantiles, one grid row each (the default rows keep the digits model inside "
                    "its data range; rows that leave it, such as q <= 0.45 on digits, are reported, not drawn)")
    sm.add_argument("--num", type=POS_INT, default=8, help="samples per q (grid columns)")
    sm.add_argument("--steps", type=POS_INT, default=None, help="constant Tsit5 steps (default: adaptive, see --rtol)")
    sm.add_argument("--rtol", type=POS_FLOAT, default=1e-3, help="rtol = atol of the adaptive solve")
    sm.add_argument("--max-steps", type=MAX_STEPS, default=1000, help="adaptive solve: give up after this many steps")
    sm.add_argument("--probes", type=POS_INT, default=1, help="Hutchinson probes for the tracked log p")
    sm.add_argument("--feasibility-tol", type=NONNEG_FLOAT, default=1.0,
                    help="guidance feasibility check tolerance in log-SNR units (0 disables it)")
    sm.add_argument("--seed", type=SEED, default=0, help="PRNG seed of the latents and probes")
    sm.add_argument("--out", default="samples.png", help="output PNG")
    sm.add_argument("--scale", type=POS_INT, default=None,
                    help="nearest-neighbour upscaling of each image (default: about 64 pixels a side, x8 for digits)")
    sm.add_argument("--no-progress", action="store_true", help="no progress bar")
    sm.set_defaults(func=_sample)


def _add_likelihood(sub) -> None:
    """``dgjax likelihood``: its options."""
    from .data import DATASETS

    lk = sub.add_parser("likelihood", help="bits/dim of a model on a data-set split (PF-ODE encoding)",
                        description="Held-out bits/dim: -log p(x)/(D ln 2) + log2(K/2) for K-level data, uniformly "
                        "dequantised (docs/math.md section 4), with log p from dg.log_likelihood (PF-ODE encoding, one "
                        "Hutchinson probe per example: unbiased in log p).",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    lk.add_argument("--model", default="digits", help="a shipped model, a NAME.msgpack file or a run directory; a "
                    "galaxy model (galaxies-hsc64, ...) re-encodes --num (default 16) of its own samples")
    lk.add_argument("--data", default=None, choices=DATASETS, help="data set (default: the model's own)")
    lk.add_argument("--split", default="test", choices=["train", "test"], help="split")
    lk.add_argument("--num", type=POS_INT, default=None, help="examples (default: the whole split, 256 for drawn sets)")
    lk.add_argument("--batch-size", type=POS_INT, default=64, help="examples per solve")
    lk.add_argument("--rtol", type=POS_FLOAT, default=1e-3, help="rtol = atol of the adaptive encoding solve")
    lk.add_argument("--seed", type=SEED, default=0, help="seed of the dequantisation noise and probes")
    lk.add_argument("--max-steps", type=MAX_STEPS, default=16384,
                    help="adaptive solves: give up after this many steps")
    lk.add_argument("--method", default="ode", choices=["ode", "sde", "elbo"],
                    help="log p by PF-ODE encoding, by the forward-SDE encoder (docs/math.md 4(e)), or the ELBO "
                    "(docs/math.md 10)")
    lk.add_argument("--steps", type=POS_INT, default=1000, help="Euler-Maruyama steps of --method sde")
    lk.add_argument("--num-samples", type=POS_INT, default=64, help="log-SNR draws per example of --method elbo")
    lk.add_argument("--dequantization", default=None, choices=["uniform", "importance", "none"],
                    help="--method ode: uniform (the mean of --repeats draws: a lower bound on log P), importance "
                    "(log-mean-exp of --draws draws: a tighter bound) or none (continuous data); default uniform "
                    "for quantized data, none for continuous data")
    lk.add_argument("--repeats", type=POS_INT, default=5, help="uniform dequantization draws per example "
                    "(score_sde's protocol: 5)")
    lk.add_argument("--draws", type=POS_INT, default=16, help="importance-weighted dequantization draws per example")
    lk.add_argument("--proposal", default="uniform", choices=["uniform", "truncnormal"],
                    help="importance proposal within a bin")
    lk.add_argument("--probes", type=POS_INT, default=1, help="Hutchinson probes per encoding (2 or more separate "
                    "the probe part of the standard error)")
    lk.add_argument("--checkpoint-dir", default=None, help="directory for per-batch results: an interrupted run "
                    "resumes there with the same numbers (other settings refuse to resume)")
    lk.add_argument("--no-progress", action="store_true", help="no progress bar")
    lk.set_defaults(func=_likelihood)


def _add_align(sub) -> None:
    """``dgjax align``: its options."""
    al = sub.add_parser("align", help="score-alignment fraction of a model's latents (docs/math.md section 6)",
                        description="Push the prior score forward along the PF-ODE (tangent ODE, one JVP per step) "
                        "and report the fraction of latents where <s_{t_end}(x_{t_end}), w_{t_end}> > 0.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    al.add_argument("--model", default="digits", help="a shipped model, a galaxy model (galaxies-hsc64, ...), a "
                    "NAME.msgpack file or a run directory")
    al.add_argument("--num", type=POS_INT, default=64, help="latents")
    al.add_argument("--batch-size", type=POS_INT, default=32, help="latents per solve")
    al.add_argument("--t-end", type=POS_FLOAT, default=0.05, help="time where alignment is measured")
    al.add_argument("--steps", type=POS_INT, default=None, help="constant Tsit5 steps (default adaptive, see --rtol)")
    al.add_argument("--rtol", type=POS_FLOAT, default=1e-3, help="rtol = atol of the adaptive solve")
    al.add_argument("--max-steps", type=MAX_STEPS, default=16384, help="adaptive solve: give up after this many steps")
    al.add_argument("--score-free", action="store_true", help="track omega by its score-free rate (Hutchinson)")
    al.add_argument("--prior-direction", action="store_true",
                    help="push the Gaussian prior's score -x_T/sigma_T^2 instead of the model's s_T(x_T)")
    al.add_argument("--seed", type=SEED, default=0, help="PRNG seed of the latents")
    al.add_argument("--no-progress", action="store_true", help="no progress bar")
    al.set_defaults(func=_align)


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # an invalid option: argparse printed the reason; return its exit code (2)
        if e.code in (0, None):
            raise
        return int(e.code)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 0
    from .errors import DgjaxError, typed_errors

    try:
        with typed_errors():  # run-time checks from compiled code come back as their dgjax class
            return args.func(args)
    except (DgjaxError, ValueError, OSError, FloatingPointError) as e:  # one line, never a traceback (issue 15)
        return _fail(str(e).strip().split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
